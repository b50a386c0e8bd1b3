"""The contract every registered encoder passes (``client.encoder_registry.ENCODERS``): the
real models, loaded offline from their wheels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.encoder import TextEncoder, encode_cached
from client.encoder_registry import ENCODERS, encoder_name, make_encoder
from client.store import EmbeddingCache
from common.errors import ConfigError, EncoderError
from common.projection import PublicProjection

pytestmark = pytest.mark.slow

TEXTS = [
    "Best trail running shoes for wet weather",
    "周末去爬山，风景太美了",  # Chinese: hiking at the weekend
    "週末は山登りに行きました",  # Japanese
    "نصائح لتحضير القهوة العربية",  # Arabic: tips for Arabic coffee
    "Receita de bolo de cenoura com cobertura de chocolate",  # Portuguese
    "mixed: 咖啡 coffee кофе café",
    "",
    "x " * 5000,
]

_ENCODERS: dict[str, TextEncoder] = {}


@pytest.fixture(params=list(ENCODERS))
def enc(request: pytest.FixtureRequest) -> TextEncoder:
    name = str(request.param)
    if name not in _ENCODERS:
        _ENCODERS[name] = make_encoder(name, num_threads=1)
    return _ENCODERS[name]


def test_shape_normalisation_and_edge_texts(enc: TextEncoder) -> None:
    """Every text, including the empty one, a 10,000-character one and mixed scripts, gets a
    finite float32 unit vector of the encoder's dimension."""
    v = enc.encode(TEXTS)
    assert v.shape == (len(TEXTS), enc.dim) and v.dtype == np.float32
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.encode([]).shape == (0, enc.dim)
    with pytest.raises(EncoderError, match="not one string"):
        enc.encode("one string")  # type: ignore[arg-type]


def test_deterministic_and_batch_independent(enc: TextEncoder) -> None:
    """The same text gives the same vector, alone or in a batch (to float rounding)."""
    batch = enc.encode(TEXTS[:6])
    again = enc.encode(TEXTS[:6])
    np.testing.assert_array_equal(batch, again)
    for i in (0, 1, 5):
        one = enc.encode([TEXTS[i]])[0]
        np.testing.assert_allclose(one, batch[i], atol=2e-5)


def test_semantics_hold(enc: TextEncoder) -> None:
    """A paraphrase is nearer than an unrelated text (in the encoder's own language range)."""
    a, b, c = enc.encode(
        ["how to bake sourdough bread", "baking a loaf of sourdough", "stock market crash"]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_cache_round_trip_keyed_by_encoder(enc: TextEncoder, tmp_path: Path) -> None:
    """encode_cached stores under the encoder's model_id, reads back the same vectors, and
    never serves one encoder's vectors to another."""
    cache = EmbeddingCache.open(tmp_path / "cache.db")
    first = encode_cached(enc, cache, TEXTS[:4])
    calls = getattr(enc, "calls_", None)
    second = encode_cached(enc, cache, TEXTS[:4])
    np.testing.assert_array_equal(first, second)
    if calls is not None:
        assert enc.calls_ == calls  # type: ignore[attr-defined]
    assert cache.count(enc.model_id) == 4
    others = [n for n in ENCODERS if encoder_name(enc.model_id) != n]
    for name in others:
        other = make_encoder(name)
        assert other.model_id != enc.model_id
        assert cache.count(other.model_id) == 0
    cache.close()


def test_registry_names_and_fingerprints() -> None:
    """Each registered name maps back from its model_id; two encoders never share a
    projection fingerprint, even at the same dimension."""
    ids = {name: make_encoder(name).model_id for name in ENCODERS}
    assert {encoder_name(i) for i in ids.values()} == set(ENCODERS)
    fps = {PublicProjection(384, 128, 1, i).fingerprint for i in ids.values()}
    assert len(fps) == len(ENCODERS)
    assert PublicProjection(384, 128, 1, "").fingerprint not in fps
    with pytest.raises(ConfigError, match="`encoder` must be one of"):
        make_encoder("word2vec")
    with pytest.raises(ConfigError, match="minilm encoder only"):
        make_encoder("use-multilingual", model_dir="/tmp")


def test_use_multilingual_mapped_table_gives_the_same_vectors(tmp_path: Path) -> None:
    """The memory-mapped embedding table (written once into the model cache) gives the
    vectors of the package's own in-memory table, bit for bit; an unwritable cache falls
    back to the in-memory table."""
    from client.encoder_use import USEMultilingualEncoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDINTEREST_MODEL_CACHE", str(tmp_path / "models"))
        mapped = USEMultilingualEncoder()
        a = mapped.encode(TEXTS)
        assert mapped.table_mapped_ and list((tmp_path / "models").glob("*-table.npy"))
        blocked = tmp_path / "file"
        blocked.write_text("not a directory", encoding="utf-8")
        mp.setenv("FEDINTEREST_MODEL_CACHE", str(blocked))
        fallback = USEMultilingualEncoder()
        b = fallback.encode(TEXTS)
        assert not fallback.table_mapped_
    c = USEMultilingualEncoder(mapped_table=False).encode(TEXTS)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
