"""Fault injection for simulations and tests, as Flower mods around the virtual devices.

- :func:`dropout_mod`: each device drops out of a round with probability ``rate`` (decided
  per device and round from a seed); under SecAgg+ it drops at a random protocol stage, so
  dropouts before masking, between masking and unmasking, and during unmasking all happen.
- :func:`poison_mod`: chosen devices replace their local-mode release with a crafted one of
  the largest norm the server accepts, all pushing one leaf toward one direction.

Never used by a deployed device.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from common.records import REPLY_ARRAYS, ROUND_CONFIG, SUMS, RoundKeys

__all__ = ["SimulatedDropoutError", "dropout_mod", "poison_mod"]

_SECAGG_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


class SimulatedDropoutError(RuntimeError):
    """A device that "disappeared" (fault injection)."""


def _round_of(msg: Any) -> int:
    content = msg.content
    if ROUND_CONFIG in content.config_records:
        return int(content.config_records[ROUND_CONFIG].get(RoundKeys.SERVER_ROUND, 0))
    group = str(msg.metadata.group_id)
    digits = "".join(c for c in group if c.isdigit())
    return int(digits) if digits else 0


def _stage_of(msg: Any) -> str | None:
    for rec in msg.content.config_records.values():
        stage = rec.get("stage")
        if isinstance(stage, str):
            return stage
    return None


def dropout_mod(rate: float, seed: int = 0) -> Callable[..., Any]:
    """A mod that makes each device drop out of each round with probability ``rate``."""
    if not 0 <= rate < 1:
        raise ValueError(f"`rate` must be in [0, 1). Found {rate!r}.")

    def mod(msg: Any, ctx: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        pid = int(ctx.node_config.get("partition-id", 0))
        rnd = _round_of(msg)
        task = zlib.crc32(str(msg.metadata.message_type).encode())
        rng = np.random.default_rng([seed, pid, rnd, task])
        drops = rng.random() < rate
        at = _SECAGG_STAGES[int(rng.integers(len(_SECAGG_STAGES)))]
        stage = _stage_of(msg)
        if drops and (stage is None or stage == at):
            raise SimulatedDropoutError(
                f"device {pid} dropped out of round {rnd} ({stage or 'release'})"
            )
        return call_next(msg, ctx)

    return mod


def poison_mod(
    malicious: Iterable[int], row: int, direction: npt.NDArray[np.floating], norm: float
) -> Callable[..., Any]:
    """A mod that turns the local-mode releases of ``malicious`` devices into ``norm`` x
    ``direction`` on ``row`` (all other rows zero)."""
    bad = set(int(i) for i in malicious)
    unit = np.asarray(direction, dtype=np.float32)
    unit = unit / np.linalg.norm(unit)

    def mod(msg: Any, ctx: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        reply = call_next(msg, ctx)
        pid = int(ctx.node_config.get("partition-id", 0))
        if pid not in bad or reply.has_error() or REPLY_ARRAYS not in reply.content.array_records:
            return reply
        rec = reply.content.array_records[REPLY_ARRAYS]
        if SUMS not in rec:
            return reply
        from flwr.app import Array

        crafted = np.zeros(rec[SUMS].shape, dtype=np.float32)
        crafted[row] = norm * unit
        rec[SUMS] = Array(crafted)
        return reply

    return mod
