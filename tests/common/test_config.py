"""Run configuration: validation and the Flower run_config round trip."""

from __future__ import annotations

import pytest

from common.config import ClusteringConfig, PrivacyConfig, RunConfig
from common.errors import ConfigError
from common.records import ReleaseMode


def test_run_config_round_trip() -> None:
    """to_run_config -> from_run_config gives the same configuration."""
    cfg = RunConfig(
        rounds=3,
        privacy=PrivacyConfig(epsilon=1.5, mode=ReleaseMode.LOCAL),
        clustering=ClusteringConfig(projection_dim=64),
    )
    flat = cfg.to_run_config()
    assert (
        flat["privacy-epsilon"] == 1.5
        and flat["privacy-mode"] == "local"
        and flat["clustering-projection-dim"] == 64
    )
    assert RunConfig.from_run_config(flat) == cfg


def test_unknown_and_bad_values_fail_loudly() -> None:
    """A typo in a key, or a bad value, is an error naming it."""
    with pytest.raises(ConfigError, match="privacy-epsilom"):
        RunConfig.from_run_config({"privacy-epsilom": 1.0})
    with pytest.raises(ConfigError, match="epsilon"):
        PrivacyConfig(epsilon=-1)
    with pytest.raises(ConfigError, match="mode"):
        PrivacyConfig(mode="shout")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rounds"):
        RunConfig(rounds=0)
