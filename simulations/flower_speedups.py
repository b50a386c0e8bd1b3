"""Speed-ups for Flower's simulation engine (flwr 1.42), used by ``fedinterest simulate`` only.

Profiling ``simulate`` (py-spy on the driver and on the Ray actors, 100-200 virtual devices)
showed that most of the wall time was spent in two places inside Flower, not in fedinterest:

1. **The simulation engine's message pump** (``flwr.server.superlink.fleet.vce.vce_api.
   add_messages_to_queue``) polls the in-memory link state ten times a second *once per
   node*, and each poll scans *every* stored message and re-validates it
   (``InMemoryLinkState.get_message_ins``): O(nodes x messages) per tick, i.e. O(n^2) while a
   round is in flight. At 200 devices it took ~40% of the driver's CPU and starved the
   ServerApp thread. :func:`_pump_messages` does the same job with one scan per tick: the same
   validity checks on the undelivered messages, the same "at most one message per node per
   tick" delivery, the same ``delivered_at`` stamping.
2. **Shamir secret sharing in SecAgg+** (``flwr.common.secure_aggregation.crypto.shamir``)
   calls pycryptodome's pure-Python GF(2^128) arithmetic, whose multiplication builds two
   128-character strings per bit. Every device splits two secrets per round (its mask seed
   and its PEM-encoded private key: 19 blocks of 16 bytes, ``num_shares`` shares each) and
   the server combines one per device. :func:`shamir_split` / :func:`shamir_combine` compute
   the **same field operations** (same irreducible polynomial ``x^128 + x^7 + x^2 + x + 1``,
   same byte encoding, same Horner evaluation and Lagrange interpolation at 0, coefficients
   from the OS CSPRNG) with plain shift-and-xor on Python ints, and cache the Lagrange
   coefficients per set of share indices. Shares are interchangeable with pycryptodome's
   (tested both ways). Pycryptodome's version tries to be constant-time; these do not, which
   is why they are installed only inside a simulation (all "devices" are processes of one
   machine, so there is no timing side channel to protect), never in the deployed apps.
3. **Key parsing in SecAgg+'s device mod**: each device re-parses its own PEM private key
   once per neighbour and stage; :func:`speedups_mod` memoises the parse in each actor.

:func:`flower_speedups` installs both for the duration of a ``run_simulation`` call and
restores Flower's functions afterwards; :func:`speedups_mod` installs the Shamir functions in
each Ray actor (the devices' side). Each patch checks the Flower version it was written
against and leaves Flower untouched on any other version.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

__all__ = [
    "FLOWER_VERSION",
    "flower_speedups",
    "gf_inverse",
    "gf_mul",
    "shamir_combine",
    "shamir_split",
    "speedups_mod",
]

#: The Flower release these patches were written against (``flwr==1.42.*`` is pinned).
FLOWER_VERSION = "1.42."

_IRR = (1 << 128) | 0x87  # x^128 + x^7 + x^2 + x + 1, pycryptodome's GF(2^128)
_MASK = (1 << 128) - 1
_FULL_CHECK_EVERY = 50  # ticks between re-validations of already delivered messages


# -- GF(2^128) -------------------------------------------------------------------------------


def _clmul(a: int, b: int) -> int:
    """Carry-less product of two polynomials over GF(2) (no reduction)."""
    if b > a:
        a, b = b, a
    z = 0
    while b:
        if b & 1:
            z ^= a
        a <<= 1
        b >>= 1
    return z


def _reduce(z: int) -> int:
    # x^128 = x^7 + x^2 + x + 1: fold the high part down until it fits in 128 bits
    while z >> 128:
        hi = z >> 128
        z = (z & _MASK) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
    return z


def gf_mul(a: int, b: int) -> int:
    """Product in GF(2^128) of two field elements encoded as 128-bit ints (LSB = constant
    coefficient), as pycryptodome's ``_Element.__mul__``."""
    return _reduce(_clmul(a, b))


def gf_inverse(a: int) -> int:
    """Multiplicative inverse in GF(2^128) (extended Euclid over GF(2)[x])."""
    if a == 0:
        raise ValueError("Inversion of zero")
    r0, r1 = a, _IRR
    s0, s1 = 1, 0
    while r1:
        q, r, d = 0, r0, r1.bit_length()
        while r.bit_length() >= d:
            shift = r.bit_length() - d
            q ^= 1 << shift
            r ^= r1 << shift
        r0, r1 = r1, r
        s0, s1 = s1, s0 ^ _clmul(q, s1)
    return _reduce(s0)


# -- Shamir over GF(2^128), 16-byte chunks ----------------------------------------------------


def shamir_split(threshold: int, num: int, chunk: bytes) -> list[tuple[int, bytes]]:
    """``num`` shares of a 16-byte chunk, any ``threshold`` of which recover it: the drop-in
    equivalent of ``Crypto.Protocol.SecretSharing.Shamir.split(threshold, num, chunk)``.

    The polynomial's other coefficients are fresh 128-bit values from the OS CSPRNG.
    """
    if len(chunk) != 16:
        raise ValueError("The encoded value must be an integer or a 16 byte string")
    if not 1 <= threshold <= num:
        raise ValueError(f"need 1 <= threshold <= num. Found {threshold}, {num}.")
    coeffs = [int.from_bytes(secrets.token_bytes(16), "big") for _ in range(threshold - 1)]
    coeffs.append(int.from_bytes(chunk, "big"))
    out = []
    for idx in range(1, num + 1):
        share = 0
        for c in coeffs:  # Horner, as pycryptodome
            share = _reduce(_clmul(share, idx)) ^ c
        out.append((idx, share.to_bytes(16, "big")))
    return out


@lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = gf_mul(num, xm)
                den = gf_mul(den, xj ^ xm)
        out.append(gf_mul(num, gf_inverse(den)))
    return tuple(out)


def shamir_combine(shares: list[tuple[int, bytes]]) -> bytes:
    """The 16-byte chunk from its shares (Lagrange interpolation at 0): the drop-in equivalent
    of ``Crypto.Protocol.SecretSharing.Shamir.combine(shares)``."""
    xs = tuple(int(i) for i, _ in shares)
    if len(set(xs)) != len(xs):
        raise ValueError("Duplicate share")
    result = 0
    for lam, (_, y) in zip(_lagrange_at_zero(xs), shares, strict=True):
        if len(y) != 16:
            raise ValueError("The encoded value must be an integer or a 16 byte string")
        result ^= gf_mul(int.from_bytes(y, "big"), lam)
    return result.to_bytes(16, "big")


# -- installation -----------------------------------------------------------------------------

_lock = threading.Lock()


def _flower_ok() -> bool:
    try:
        import flwr
    except ImportError:
        return False
    return str(getattr(flwr, "__version__", "")).startswith(FLOWER_VERSION)


def _install_shamir() -> Callable[[], None]:
    """Points Flower's per-chunk Shamir helpers at the fast ones; returns the undo."""
    from flwr.common.secure_aggregation.crypto import shamir

    old_split, old_combine = shamir._shamir_split, shamir._shamir_combine
    shamir._shamir_split = shamir_split
    shamir._shamir_combine = shamir_combine

    def undo() -> None:
        shamir._shamir_split = old_split
        shamir._shamir_combine = old_combine

    return undo


def _install_key_cache() -> Callable[[], None]:
    """SecAgg+'s device side re-parses its own PEM private key for every neighbour (twice a
    round); parse each key once per process."""
    import importlib

    # the package re-exports the mod *function* under the module's name: fetch the module
    mod: Any = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    old = mod.bytes_to_private_key
    mod.bytes_to_private_key = lru_cache(maxsize=64)(old)

    def undo() -> None:
        mod.bytes_to_private_key = old

    return undo


def _pump_messages(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
    """``vce_api.add_messages_to_queue`` with one scan of the link state per tick."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.supercore.date import now

    if not isinstance(state, InMemoryLinkState):  # another state: Flower's own loop
        _ORIGINAL_PUMP[0](state, queue, nodes_mapping, f_stop)
        return
    nodes = set(nodes_mapping.keys())
    tick = 0
    while not f_stop.is_set():
        tick += 1
        with state.lock:
            store = state.message_ins_store
            pending = [
                mid
                for mid, m in store.items()
                if m.metadata.delivered_at == "" and m.metadata.dst_node_id in nodes
            ]
            # the same validity checks (expiry, federation) Flower runs on every poll; already
            # delivered messages are re-checked every few seconds instead of every tick
            check = set(store) if tick % _FULL_CHECK_EVERY == 0 else set(pending)
            if check:
                state._check_stored_messages(check)
            stamp = now().isoformat()
            served: set[int] = set()
            for mid in pending:
                msg = store.get(mid)
                if msg is None or msg.metadata.delivered_at != "":
                    continue
                node = msg.metadata.dst_node_id
                if node in served:  # Flower hands out one message per node per tick
                    continue
                served.add(node)
                msg.metadata.delivered_at = stamp
                queue.put(msg)
        f_stop.wait(0.1)


_ORIGINAL_PUMP: list[Any] = []


def _install_pump() -> Callable[[], None]:
    from flwr.server.superlink.fleet.vce import vce_api

    old = vce_api.add_messages_to_queue
    if not _ORIGINAL_PUMP:
        _ORIGINAL_PUMP.append(old)
    vce_api.add_messages_to_queue = _pump_messages

    def undo() -> None:
        vce_api.add_messages_to_queue = old

    return undo


@contextmanager
def flower_speedups(enabled: bool = True) -> Iterator[bool]:
    """Installs the simulation speed-ups in this process for the ``with`` block (yields
    whether they were installed: not on another Flower version, or when ``enabled`` is
    false)."""
    if not (enabled and _flower_ok()):
        yield False
        return
    with _lock:
        undo = [_install_pump(), _install_shamir()]
    try:
        yield True
    finally:
        with _lock:
            for u in reversed(undo):
                u()


_actor_installed = False


def speedups_mod(msg: Any, context: Any, call_next: Any) -> Any:
    """A Flower client mod for simulated devices: installs the fast Shamir helpers in the Ray
    actor that runs it (once per process), then passes the message on unchanged."""
    global _actor_installed
    if not _actor_installed:
        with _lock:
            if not _actor_installed and _flower_ok():
                _install_shamir()
                _install_key_cache()
            _actor_installed = True
    return call_next(msg, context)
