"""The simulation speed-ups compute what Flower and pycryptodome compute."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir, _Element

from client.policy import DevicePolicy
from simulations.flower_speedups import (
    flower_speedups,
    gf_inverse,
    gf_mul,
    shamir_combine,
    shamir_split,
)


def test_gf_arithmetic_matches_pycryptodome() -> None:
    """Products and inverses in GF(2^128) equal pycryptodome's, small and full-size operands."""
    r = random.Random(3)
    for _ in range(200):
        a = r.getrandbits(128)
        b = r.getrandbits(r.choice([3, 40, 128]))
        assert gf_mul(a, b) == int(_Element(a) * _Element(b))
        if a:
            assert gf_inverse(a) == int(_Element(a).inverse())
            assert gf_mul(a, gf_inverse(a)) == 1


@pytest.mark.parametrize(("threshold", "num"), [(2, 2), (7, 11), (19, 31)])
def test_shamir_shares_interoperate(threshold: int, num: int) -> None:
    """Our shares combine with pycryptodome and theirs with ours, from any `threshold` of them."""
    r = random.Random(threshold)
    secret = os.urandom(16)
    ours = shamir_split(threshold, num, secret)
    theirs = Shamir.split(threshold, num, secret)
    assert Shamir.combine(r.sample(ours, threshold)) == secret
    assert shamir_combine(r.sample(theirs, threshold)) == secret
    assert shamir_combine(ours) == secret
    if threshold > 1:
        assert shamir_combine(ours[: threshold - 1]) != secret  # too few shares: wrong value


def test_shamir_rejects_bad_input() -> None:
    """Duplicate indices and wrong chunk sizes fail like pycryptodome."""
    shares = shamir_split(2, 3, b"0123456789abcdef")
    with pytest.raises(ValueError, match="Duplicate"):
        shamir_combine([shares[0], shares[0]])
    with pytest.raises(ValueError):
        shamir_split(2, 3, b"short")


def test_speedups_install_and_restore() -> None:
    """Inside the block Flower uses the fast helpers; afterwards its own functions are back."""
    from flwr.common.secure_aggregation.crypto import shamir
    from flwr.server.superlink.fleet.vce import vce_api

    before = (shamir._shamir_split, shamir._shamir_combine, vce_api.add_messages_to_queue)
    with flower_speedups() as on:
        assert on
        assert shamir._shamir_split is shamir_split
        secret = os.urandom(32)
        shares = shamir.create_shares(secret, 3, 5)
        assert shamir.combine_shares(shares[1:4]) == secret
    assert (shamir._shamir_split, shamir._shamir_combine, vce_api.add_messages_to_queue) == before
    with flower_speedups(enabled=False) as on:
        assert not on


def test_masked_vectors_travel_compact() -> None:
    """A masked vector mod 2^32 leaves as uint32 and is read back as the same int64 values."""
    from flwr.app import ConfigRecord, RecordDict
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from common.secagg_wire import compact_masked_vectors, widen_masked_vectors

    rng = np.random.default_rng(0)
    arrays = [np.array([4194304], dtype=np.int64), rng.integers(0, 2**32, (257, 128))]
    content = RecordDict(
        {
            RECORD_KEY_CONFIGS: ConfigRecord(
                {Key.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in arrays]}
            )
        }
    )
    wide = sum(len(b) for b in content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
    saved = compact_masked_vectors(content)
    assert saved > 0.45 * wide
    got = content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    assert [bytes_to_ndarray(b).dtype for b in got] == [np.uint32, np.uint32]  # type: ignore[arg-type]
    widen_masked_vectors(content)
    back = [
        bytes_to_ndarray(b)  # type: ignore[arg-type]
        for b in content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    ]
    for a, b in zip(arrays, back, strict=True):
        assert b.dtype == np.int64
        np.testing.assert_array_equal(a, b)


def test_client_app_pickles_as_a_small_recipe(tmp_path: Path) -> None:
    """What Flower ships to the Ray actors with every message is a small recipe, whatever the
    number of devices, and it rebuilds to one cached app per process."""
    from ray import cloudpickle

    from simulations.simulate import _CLIENT_APPS, _client_app, _DeviceRecipe, _store_path

    recipe = _DeviceRecipe(
        "t-1", str(tmp_path), 2.0, False, None, ((3, 1.0),), (), DevicePolicy(delta=1e-5)
    )
    try:
        app = _client_app(recipe)
        blob = cloudpickle.dumps(lambda: app)
        assert len(blob) < 4096
        assert cloudpickle.loads(blob)() is app
        _CLIENT_APPS.clear()  # a fresh actor: rebuilt from the recipe
        again = cloudpickle.loads(blob)()
        assert again is not app and again is _client_app(recipe)
    finally:
        _CLIENT_APPS.clear()
    assert _store_path(tmp_path, 7) == tmp_path / "client-00007.db"
