"""Many simulated devices at once: the release of a shard of users (the batched engine).

:class:`ShardDevices` answers one release request for the members of its shard the way each
of those devices would (:func:`client.release.release_round`, :func:`~client.release.count_release`,
:func:`~client.release.histogram_release`), with the same checks and the same arithmetic:

- the round config is parsed and checked by the same :meth:`RoundConfig.from_record`
  (fail closed), the projection and centroids by the same
  :func:`~client.release.public_projection` / :func:`~client.release.checked_centroids`;
- each user's release is computed by the same functions of :mod:`client.release_math` (there
  the device is a population of one), over this shard's users at once;
- each user's budget is checked against **its own** ledger with the same
  :func:`common.privacy.check_budget` (users with identical ledgers and budgets share one
  computation: the result depends on nothing else); users who would exceed it release
  nothing and are reported as ``budget_exceeded``, as a device replies;
- the ledger rows of the releasing users and the noisy sum are committed in one transaction
  before the sum is returned; a repeated request (same release key, same mechanism
  parameters, same members) gets the stored sum back (no new spend); a user who already
  released under that key, for another cohort or under other parameters, is refused, never
  asked to release twice.

**Noise.** Each releasing device adds ``N(0, s^2)`` (``s`` = the round's ``noise_std``: the
secure-aggregation share or, in local mode, the full noise). The shard draws the sum of its
``m`` users' shares as one ``N(0, m s^2)`` vector: the sum of independent Gaussians is
Gaussian with the summed variance (e.g. Dwork & Roth 2014, *The Algorithmic Foundations of
Differential Privacy*, the Gaussian mechanism, App. A), so the released shard sum has exactly
the distribution of the sum of ``m`` device releases; tests/simulations/test_engines.py
checks the variance against the devices engine.

**What is simulated, and what is not** (docs/performance.md): the secure sum is an exact sum
(no masking, no key agreement, no quantisation mod 2^32), and devices do not drop out between
protocol stages; the shard's members either release or refuse with a status.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.local_clustering import assign_public
from client.policy import DevicePolicy
from client.release import (
    RELEASE_WEIGHTING,
    checked_centroids,
    checked_groups,
    mechanism_digest,
    nearest_group,
    public_projection,
    release_key,
)
from client.release_math import (
    UserSum,
    count_sum,
    histogram_sum,
    integer_shares_sum,
    leaf_sum,
)
from client.shard_store import ShardData, ShardStore, StoredRelease
from common.errors import BudgetExceededError, ReleaseRefusedError
from common.features import event_weights
from common.privacy import LedgerEntry, PrivacyBudget, check_budget
from common.records import ReleaseTask, ReplyStatus
from common.round_config import RoundConfig

__all__ = ["ShardDevices", "ShardOutcome"]


@dataclass(frozen=True)
class ShardOutcome:
    """A shard's answer to one request.

    Attributes:
        total: the noisy sum of the releasing members' releases (float64), ``None`` when
            nobody released.
        usable: members whose release is in ``total``.
        statuses: per :class:`~common.records.ReplyStatus` value, how many members replied so.
        reused: the stored answer to the same request was sent again.
        seconds: time spent computing.
    """

    total: npt.NDArray[np.float64] | None
    usable: int
    statuses: dict[str, int] = field(default_factory=dict)
    reused: bool = False
    seconds: float = 0.0


class ShardDevices:
    """The devices of one shard store.

    Args:
        path: the shard store (:class:`client.shard_store.ShardStore`).
        allow_no_dp: accept rounds without noise (``--no-dp`` simulations only).
        noise_seed: seeds the noise (tests only; ``None`` = OS entropy).
        shard: this shard's index (salts the seeded noise).
        policy: the devices' own delta, unit and minimum cohort
            (:class:`client.policy.DevicePolicy`); a request breaching them is refused.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        allow_no_dp: bool = False,
        noise_seed: int | None = None,
        shard: int = 0,
        policy: DevicePolicy | None = None,
    ) -> None:
        self.path = Path(path)
        self.policy = policy if policy is not None else DevicePolicy()
        self.allow_no_dp = allow_no_dp
        self.noise_seed = noise_seed
        self.shard = shard
        with ShardStore(self.path) as store:
            self.data: ShardData = store.read()
            self._load_ledgers(store)
        d = self.data
        self._weights = event_weights(
            d.event_type,
            d.timestamp,
            dwell_seconds=d.dwell,
            values=d.value,
            reference_time=0.0,
            config=RELEASE_WEIGHTING,
        )
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}

    def _load_ledgers(self, store: ShardStore) -> None:
        self._mechanisms: dict[int, LedgerEntry] = store.mechanisms()
        ids = store.ledger_ids()
        self._ledgers: list[tuple[int, ...]] = [tuple(ids.get(int(g), ())) for g in self.data.users]
        self._latest = max(self._mechanisms, default=0)

    @property
    def users(self) -> npt.NDArray[np.int64]:
        """The global indices of this shard's users."""
        return self.data.users

    # -- one request ----------------------------------------------------------------------

    def release(
        self, record: Mapping[str, Any], first: npt.NDArray[np.generic], members: Sequence[int]
    ) -> ShardOutcome:
        """Answers one release request for ``members`` (global user indices).

        Args:
            record: the round config as sent (parsed here, fail closed).
            first: the request's public array: centroids, group centroids or encoded item ids.

        Raises:
            ReleaseRefusedError: the request is malformed (every member refuses it).
        """
        t0 = time.perf_counter()
        params = RoundConfig.from_record(record, allow_no_dp=self.allow_no_dp)
        # each device accounts at the delta it holds, never at a larger one announced, and adds
        # a noise share only for a cohort at least its own floor
        self.policy.admit(params)
        asked = np.unique(np.asarray(members, dtype=np.int64))
        local = np.searchsorted(self.data.users, asked)
        known = (local < len(self.data.users)) & (
            self.data.users[np.minimum(local, len(self.data.users) - 1)] == asked
        )
        if not known.all():
            raise ReleaseRefusedError(
                f"{int((~known).sum())} members are not users of this shard "
                f"(first {int(asked[~known][0])})."
            )
        key = release_key(params)
        with ShardStore(self.path) as store:
            if store.latest_mechanism() != self._latest:
                # another process answered a request of this shard since (Flower's Ray backend
                # runs a node's messages on any actor): read the ledgers again, never budget
                # from a stale copy
                self._load_ledgers(store)
            stored = store.stored_release(key)
            digest = mechanism_digest(params, tuple(np.shape(first)))
            if (
                stored is not None
                and stored.mechanism == digest
                and np.array_equal(stored.members, asked)
            ):
                return ShardOutcome(
                    stored.total if stored.usable else None,
                    stored.usable,
                    dict(stored.statuses),
                    reused=True,
                    seconds=time.perf_counter() - t0,
                )
            per_user = self._per_user_release(params, first)
            statuses: Counter[str] = Counter()
            released_before = store.released_users(key)
            entry = params.ledger_entry(self.policy.unit)
            releasing = self._admit(params, entry, local, asked, released_before, statuses)
            sel = np.zeros(len(self.data.users), dtype=bool)
            sel[releasing] = True
            m = int(sel.sum())
            if m == 0:
                # nobody releases: nothing computed, nothing recorded
                return ShardOutcome(None, 0, dict(statuses), seconds=time.perf_counter() - t0)
            summed = per_user(sel)
            if params.discrete:
                if summed.total.size != params.release_dim:
                    raise ReleaseRefusedError(
                        f"the release has {summed.total.size} coordinates, the round "
                        f"announced {params.release_dim}."
                    )
                total = integer_shares_sum(params, summed.total, m, self._rng(params))
            else:
                total = summed.total + self._noise(params, m, summed.total.shape)
            statuses[ReplyStatus.OK.value] += m
            out_users = self.data.users[releasing]
            seqs = [len(self._ledgers[i]) + 1 for i in releasing]
            mech = store.record_release(
                key,
                entry,
                out_users.tolist(),
                seqs,
                StoredRelease(digest, asked, total, m, dict(statuses)),
            )
        self._mechanisms[mech] = entry
        self._latest = mech
        for i in releasing:
            self._ledgers[i] = (*self._ledgers[i], mech)
        return ShardOutcome(total, m, dict(statuses), seconds=time.perf_counter() - t0)

    def _admit(
        self,
        params: RoundConfig,
        entry: LedgerEntry,
        local: npt.NDArray[np.int64],
        asked: npt.NDArray[np.int64],
        released_before: set[int],
        statuses: Counter[str],
    ) -> list[int]:
        """The local indices of the members that release: each checked against its own
        ledger and budget, as the device would (one computation per distinct ledger+budget)."""
        verdicts: dict[tuple[tuple[int, ...], float], bool] = {}
        out = []
        for i, g in zip(local.tolist(), asked.tolist(), strict=True):
            if g in released_before:
                # a device re-sends its stored release; a member of another cohort for the same
                # key would be asked to release twice: refused
                statuses[ReplyStatus.REFUSED.value] += 1
                continue
            budget = float(self.data.budgets[i])
            if math.isnan(budget):
                if params.non_private:
                    out.append(i)
                else:
                    statuses[ReplyStatus.REFUSED.value] += 1
                continue
            sig = (self._ledgers[i], budget)
            ok = verdicts.get(sig)
            if ok is None:
                try:
                    check_budget(
                        [self._mechanisms[m] for m in sig[0]],
                        [entry],
                        PrivacyBudget(budget, self.policy.delta, self.policy.unit),
                    )
                    ok = True
                except BudgetExceededError:
                    ok = False
                verdicts[sig] = ok
            if ok:
                out.append(i)
            else:
                statuses[ReplyStatus.BUDGET_EXCEEDED.value] += 1
        return out

    def _noise(
        self, params: RoundConfig, m: int, shape: tuple[int, ...]
    ) -> npt.NDArray[np.float64]:
        """The sum of ``m`` devices' noise shares, drawn at once (see the module docstring)."""
        if m == 0 or params.noise_std == 0:
            return np.zeros(shape)
        rng = self._rng(params)
        out: npt.NDArray[np.float64] = rng.normal(0.0, params.noise_std * math.sqrt(m), size=shape)
        return out

    def _rng(self, params: RoundConfig) -> np.random.Generator:
        if self.noise_seed is None:
            return np.random.default_rng()
        salt = [self.noise_seed, self.shard, params.server_round, params.hierarchy_version]
        return np.random.default_rng([*salt, list(ReleaseTask).index(params.task)])

    # -- the per-task arithmetic ----------------------------------------------------------

    def _text_vectors(self, params: RoundConfig) -> npt.NDArray[np.float32]:
        """The shard's texts in the round's public space (each distinct text once)."""
        projection = public_projection(
            params, int(self.data.embeddings.shape[1]), self.data.model_id
        )
        fp = projection.fingerprint
        if fp not in self._vectors:
            self._vectors = {fp: projection(self.data.embeddings)}
        return self._vectors[fp]

    def _per_user_release(self, params: RoundConfig, first: npt.NDArray[np.generic]):  # type: ignore[no-untyped-def]
        """Validates the request's inputs and returns ``sel -> UserSum`` for its task."""
        d = self.data
        n_users = len(d.users)

        def events(sel: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
            out: npt.NDArray[np.bool_] = sel[d.user]
            return out

        if params.task is ReleaseTask.LEAF_SUMS:
            c = checked_centroids(params, np.asarray(first))
            vecs = self._text_vectors(params)
            rows = assign_public(vecs, c, residual_threshold=params.residual_threshold)

            def leaf(sel: npt.NDArray[np.bool_]) -> UserSum:
                e = events(sel)
                return leaf_sum(
                    vecs,
                    rows,
                    d.text[e],
                    self._weights[e],
                    d.user[e],
                    n_users,
                    c.shape[0] + 1,
                    clipping_norm=params.clipping_norm,
                    max_weight=min(params.max_weight, RELEASE_WEIGHTING.max_weight),
                    user_clipping_norm=params.user_clipping_norm,
                )

            return leaf
        if params.task is ReleaseTask.HISTOGRAM:
            top_k = params.top_k if params.top_k is not None else 1
            g = checked_groups(params, np.asarray(first), top_k)
            groups = nearest_group(self._text_vectors(params), g)

            def histogram(sel: npt.NDArray[np.bool_]) -> UserSum:
                e = events(sel)
                return histogram_sum(
                    groups,
                    d.text[e],
                    self._weights[e],
                    d.user[e],
                    n_users,
                    g.shape[0],
                    top_k=top_k,
                    user_clipping_norm=params.user_clipping_norm,
                )

            return histogram
        from common.records import decode_ids

        try:
            catalogue = decode_ids(np.asarray(first))
        except (UnicodeDecodeError, ValueError) as err:
            raise ReleaseRefusedError(
                f"the catalogue array is not UTF-8 item ids: {err}."
            ) from None
        if not catalogue:
            raise ReleaseRefusedError("an item-count round needs the catalogue's item ids.")
        index = {item: i for i, item in enumerate(catalogue)}
        item_map = np.array([index.get(it, -1) for it in d.item_ids] + [-1], dtype=np.int64)
        # -1 (no item) indexes the appended -1
        event_item = item_map[d.item]

        def counts(sel: npt.NDArray[np.bool_]) -> UserSum:
            e = events(sel)
            return count_sum(
                event_item[e],
                d.user[e],
                n_users,
                len(catalogue),
                user_clipping_norm=params.user_clipping_norm,
            )

        return counts
