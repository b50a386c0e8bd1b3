"""Integer noise for secure aggregation: the distributed discrete Gaussian mechanism.

Secure aggregation sums integers modulo ``2^32``. Adding continuous Gaussian noise and letting
the protocol clip, round and wrap afterwards releases something the Gaussian accounting does
not describe. Here the device itself maps its release to integers and adds **integer** noise,
so that what the protocol sums is exactly the analysed mechanism (Kairouz, Liu and Steinke
2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML; cited below as KLS21):

1. **Scaling**: the release ``x`` (L2 norm <= ``Delta``, the unit's sensitivity) is divided by
   the public granularity ``gamma = Delta / clip_units``: its norm is at most ``clip_units``.
2. **Conditional randomized rounding** (KLS21 Sec. 4.1, Prop. 22): each coordinate is
   rounded down or up at random, unbiased; the rounding is redrawn until the rounded vector's
   L2 norm is at most ``Delta_2`` (:func:`rounded_norm_bound`):
   ``Delta_2^2 = min((c + sqrt(d))^2, c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2))``, the
   second term a bound that one draw meets with probability >= 1 - beta (KLS21 Thm. 1). The
   bound holds deterministically after the retries, so ``Delta_2`` is the L2 sensitivity of
   the integer sum (add/remove one device, or one event at event level).
3. **Noise**: each of the ``n`` devices of the cohort adds ``N_Z(0, sigma^2)`` per coordinate,
   the discrete Gaussian of Canonne, Kamath and Steinke 2020 ("The Discrete Gaussian for
   Differential Privacy", NeurIPS), sampled exactly by their Algorithm 3
   (:func:`sample_discrete_gaussian`). In local mode ``n = 1`` (the device adds all of it).
4. **Modular wrap**: the protocol sums modulo ``2^32``; the server lifts the sum back. The
   wrap is a function of the exact integer sum (post-processing, Dwork and Roth 2014, Prop.
   2.1), so it costs no privacy; the server chooses the integer range so that an honest sum
   never wraps (:func:`integer_range`), and refuses a cohort it cannot fit.

**Accounting** (KLS21 Prop. 14, Eq. 17, and Thm. 1): the sum of ``n`` independent
``N_Z(0, sigma^2)`` is close to ``N_Z(0, n sigma^2)``, within the inflation
``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``; the mechanism satisfies Renyi DP
of every order ``alpha`` with ``eps(alpha) <= min(alpha s^2 / 2 + tau d,
alpha (s + sqrt(d) tau)^2 / 2)`` where ``s = Delta_2 / (sqrt(n) sigma)`` and ``d`` the dimension
(:func:`ddg_rdp`). The second term is the Renyi divergence of a Gaussian mechanism with
multiplier ``z' = 1 / (s + sqrt(d) tau)`` at every order, so the release is recorded as a
``discrete_gaussian`` ledger entry with that multiplier (:func:`ddg_multiplier`) and composed
**with Renyi DP** (dp-accounting's RDP accountant; a zCDP guarantee does not imply the
Gaussian's privacy-loss distribution, so the PLD accountant is not used for a ledger holding
one). With ``sigma`` in the hundreds or more, as calibrated here, ``tau`` underflows to 0 and
``z'`` is the continuous multiplier up to the rounding's inflation of the sensitivity
(``Delta_2 / clip_units - 1``, about 0.2% at the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_CLIP_UNITS",
    "MODULUS",
    "DiscreteSpec",
    "conditional_round",
    "ddg_multiplier",
    "ddg_rdp",
    "ddg_tau",
    "discrete_gaussian_pmf",
    "integer_range",
    "rounded_norm_bound",
    "sample_discrete_gaussian",
]

#: The modulus of Flower's SecAgg+ (``2^32``).
MODULUS = 1 << 32
#: The chance that one rounding draw misses the norm bound's second term (KLS21 uses e^-0.5).
DEFAULT_BETA = math.exp(-0.5)
#: The clipped release's norm in integer units: 2048 keeps the rounding's inflation of the
#: sensitivity near 0.2% for releases of ~16,000 coordinates (129 rows x 128 dimensions).
DEFAULT_CLIP_UNITS = 2048.0
#: Standard deviations of a device's noise the integer range covers (beyond the release's own
#: norm): the chance that a share leaves it is below 2 exp(-tails^2 / 2) per coordinate
#: (the discrete Gaussian is subgaussian, CKS20 Prop. 19): ~1e-55 at 16.
_TAILS = 16.0


def _check_positive(v: float, name: str) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ConfigError(f"`{name}` must be > 0. Found {v!r}.")


def rounded_norm_bound(clip_units: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """``Delta_2``: the L2 norm bound of a conditionally rounded vector whose norm was at most
    ``clip_units`` (KLS21 Thm. 1; ``beta`` 0 gives the worst case ``c + sqrt(d)``)."""
    _check_positive(clip_units, "clip_units")
    if not (isinstance(dim, int) and dim >= 1):
        raise ConfigError(f"`dim` must be an int >= 1. Found {dim!r}.")
    worst = (clip_units + math.sqrt(dim)) ** 2
    if not 0 <= beta < 1:
        raise ConfigError(f"`beta` must be in [0, 1). Found {beta!r}.")
    if beta == 0:
        return math.sqrt(worst)
    likely = (
        clip_units**2
        + dim / 4.0
        + math.sqrt(2.0 * math.log(1.0 / beta)) * (clip_units + math.sqrt(dim) / 2.0)
    )
    return math.sqrt(min(worst, likely))


def ddg_tau(sigma: float, n: int) -> float:
    """KLS21 Thm. 1's ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))`` for ``n``
    devices each adding ``N_Z(0, sigma^2)`` (``sigma`` in integer units); 0 for ``n = 1``."""
    _check_positive(sigma, "sigma")
    if not (isinstance(n, int) and n >= 1):
        raise ConfigError(f"`n` must be an int >= 1. Found {n!r}.")
    if n == 1:
        return 0.0
    k = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1))))


def ddg_rdp(alpha: float, *, sensitivity: float, sigma: float, n: int, dim: int) -> float:
    """The Renyi DP of order ``alpha`` of the distributed discrete Gaussian sum (KLS21 Prop.
    14, Eq. 17): ``min(alpha s^2 / 2 + tau d, alpha (s + sqrt(d) tau)^2 / 2)``."""
    s = sensitivity / (math.sqrt(n) * sigma)
    tau = ddg_tau(sigma, n)
    return min(alpha * s**2 / 2.0 + tau * dim, alpha * (s + math.sqrt(dim) * tau) ** 2 / 2.0)


def ddg_multiplier(*, sensitivity: float, sigma: float, n: int, dim: int) -> float:
    """The Gaussian multiplier whose Renyi divergence bounds the sum's at every order:
    ``z' = 1 / (s + sqrt(d) tau)`` (the second term of :func:`ddg_rdp`)."""
    _check_positive(sensitivity, "sensitivity")
    s = sensitivity / (math.sqrt(n) * sigma)
    return 1.0 / (s + math.sqrt(dim) * ddg_tau(sigma, n))


def integer_range(clip_units: float, dim: int, sigma: float, beta: float = DEFAULT_BETA) -> int:
    """The coordinate range ``R`` of one device's integer share: its rounded release (norm
    ``Delta_2``, so every coordinate) plus :data:`_TAILS` noise deviations."""
    return math.ceil(rounded_norm_bound(clip_units, dim, beta) + _TAILS * sigma)


@dataclass(frozen=True)
class DiscreteSpec:
    """One release's integer mechanism, as the round config states it.

    Attributes:
        granularity: ``gamma``: one integer unit in release units (``Delta / clip_units``).
        clip_units: the release's norm bound in integer units.
        sigma: each device's noise std in integer units.
        shares: devices whose noise makes up the sum's (1 in local mode).
        dim: the release's number of coordinates.
        beta: the rounding's miss probability in the norm bound.
    """

    granularity: float
    clip_units: float
    sigma: float
    shares: int
    dim: int
    beta: float = DEFAULT_BETA

    @property
    def sensitivity(self) -> float:
        """``Delta_2`` in integer units."""
        return rounded_norm_bound(self.clip_units, self.dim, self.beta)

    @property
    def multiplier(self) -> float:
        return ddg_multiplier(
            sensitivity=self.sensitivity, sigma=self.sigma, n=self.shares, dim=self.dim
        )

    @property
    def range(self) -> int:
        return integer_range(self.clip_units, self.dim, self.sigma, self.beta)


def sample_discrete_gaussian(
    sigma: float, shape: tuple[int, ...], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """``N_Z(0, sigma^2)`` samples: Canonne, Kamath and Steinke 2020, Algorithm 3 (rejection
    from the discrete Laplace with scale ``t = floor(sigma) + 1``, accepted with probability
    ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``), vectorised. ``sigma`` 0 gives zeros."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"`sigma` must be a finite number >= 0. Found {sigma!r}.")
    size = int(np.prod(shape)) if shape else 1
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out.reshape(shape)
    t = math.floor(sigma) + 1
    p = 1.0 - math.exp(-1.0 / t)
    todo = np.arange(size)
    while todo.size:
        # discrete Laplace: the difference of two geometric numbers of failures
        y = (rng.geometric(p, todo.size) - 1) - (rng.geometric(p, todo.size) - 1)
        accept = rng.random(todo.size) < np.exp(
            -((np.abs(y) - sigma**2 / t) ** 2) / (2.0 * sigma**2)
        )
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out.reshape(shape)


def discrete_gaussian_pmf(
    sigma: float, support: npt.NDArray[np.integer]
) -> npt.NDArray[np.float64]:
    """The probability mass of ``N_Z(0, sigma^2)`` at ``support`` (normalised over
    ``|k| <= 40 sigma + 40``, where the rest of the mass is below 1e-300)."""
    _check_positive(sigma, "sigma")
    half = int(40 * sigma + 40)
    k = np.arange(-half, half + 1, dtype=np.float64)
    z = float(np.sum(np.exp(-(k**2) / (2 * sigma**2))))
    s = np.asarray(support, dtype=np.float64)
    return np.asarray(np.exp(-(s**2) / (2 * sigma**2)) / z, dtype=np.float64)


def conditional_round(
    x: npt.NDArray[np.floating], bound: float, rng: np.random.Generator, *, max_tries: int = 1000
) -> npt.NDArray[np.int64]:
    """Unbiased randomized rounding of each coordinate, redrawn until the result's L2 norm is
    at most ``bound`` (KLS21 Sec. 4.1).

    Raises:
        ConfigError: no draw met the bound in ``max_tries`` (``bound`` below what rounding a
            vector of this norm can reach).
    """
    a = np.asarray(x, dtype=np.float64)
    low = np.floor(a)
    frac = a - low
    for _ in range(max_tries):
        r = (low + (rng.random(a.shape) < frac)).astype(np.int64)
        if float(np.sqrt(np.sum(r.astype(np.float64) ** 2))) <= bound:
            return r
    raise ConfigError(
        f"randomized rounding never met the norm bound {bound:.6g} in {max_tries} draws "
        f"(the vector's norm is {float(np.linalg.norm(a)):.6g})."
    )
