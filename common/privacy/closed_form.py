"""Closed-form epsilons of un-sampled Gaussian mechanisms, in ``math`` and ``numpy`` only.

A device's ledger holds un-sampled Gaussian releases (leaf sums, counts, histograms; the
distributed discrete Gaussian is accounted as its Gaussian RDP bound), whose composition has
closed forms. Computing them here keeps ``dp_accounting`` and the ~80 MB of scipy it imports
out of a device's round (the ``edge`` install's memory target); :mod:`common.privacy.accounting`
falls back to ``dp_accounting`` for everything else (Poisson-sampled events, DP-SGD), and the
tests check both closed forms against ``dp_accounting`` to ~1e-9 relative.

- :func:`analytic_gaussian_epsilon`: the tight epsilon of one Gaussian mechanism of
  sensitivity 1 and noise ``z`` (Balle and Wang, "Improving the Gaussian Mechanism for
  Differential Privacy", ICML 2018, Thm. 8: the mechanism is (eps, delta)-DP iff
  ``Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z) <= delta``), solved for eps by bisection
  in log space. Composed un-sampled Gaussians are one Gaussian with
  ``z = (sum_i z_i^-2)^-1/2`` (Dong, Roth and Su, "Gaussian Differential Privacy", JRSS-B
  2022, Cor. 3.3), so this is exact for a whole ledger of them.
- :func:`gaussian_rdp_epsilon`: the Renyi route: a Gaussian of noise ``z`` has RDP
  ``alpha / (2 z^2)`` at every order (Mironov, "Renyi Differential Privacy", CSF 2017,
  Prop. 7), RDP adds under composition (ibid., Prop. 1), and RDP converts to (eps, delta) by
  Canonne, Kamath and Steinke ("The Discrete Gaussian for Differential Privacy", NeurIPS
  2020, Prop. 12): ``eps = rdp(alpha) + log1p(-1/alpha) - log(delta alpha) / (alpha - 1)``,
  minimised over :data:`RDP_ORDERS`, the grid ``dp_accounting``'s RDP accountant uses by
  default, so a device and an audit with dp-accounting get the same number.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

__all__ = ["RDP_ORDERS", "analytic_gaussian_epsilon", "gaussian_rdp_epsilon", "log_ndtr"]

#: Renyi orders: dp-accounting's default grid (``DEFAULT_RDP_ORDERS``).
RDP_ORDERS: Final[tuple[float, ...]] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(11, 64)),
    128.0,
    256.0,
    512.0,
    1024.0,
)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_ndtr(x: float) -> float:
    """``log Phi(x)`` for the standard normal CDF, accurate in both tails: ``erfc`` down to
    ``x = -20``, then the asymptotic series ``Phi(x) ~ phi(x)/(-x) (1 - 1/x^2 + 3/x^4 - 15/x^6
    + 105/x^8)`` (Abramowitz and Stegun 26.2.12; relative error < 1e-10 there)."""
    if x > -20.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    t = 1.0 / (x * x)
    series = 1.0 - t * (1.0 - t * (3.0 - t * (15.0 - 105.0 * t)))
    return -0.5 * x * x - math.log(-x) - _LOG_SQRT_2PI + math.log(series)


def _log_delta(z: float, eps: float) -> float:
    """``log delta(eps)`` of the Gaussian mechanism with sensitivity 1 and noise ``z``
    (Balle and Wang 2018, Thm. 8), ``-inf`` where it is 0."""
    a = log_ndtr(0.5 / z - eps * z)
    b = eps + log_ndtr(-0.5 / z - eps * z)
    if b >= a:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def analytic_gaussian_epsilon(z: float, delta: float, tol: float = 1e-12) -> float:
    """The smallest eps with the Gaussian mechanism (sensitivity 1, noise multiplier ``z``)
    (eps, delta)-DP (Balle and Wang 2018, Thm. 8); ``inf`` for ``z == 0``, 0 when delta
    already covers eps = 0."""
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1). Found {delta!r}.")
    if z < 0 or math.isnan(z):
        raise ValueError(f"`z` must be >= 0. Found {z!r}.")
    if z == 0:
        return math.inf
    if math.isinf(z):
        return 0.0
    log_delta = math.log(delta)
    if _log_delta(z, 0.0) <= log_delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while _log_delta(z, hi) > log_delta:
        lo, hi = hi, hi * 10.0
    while hi - lo > tol * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if _log_delta(z, mid) > log_delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_rdp_epsilon(inv_sq: float, delta: float) -> float:
    """Epsilon at ``delta`` of composed un-sampled Gaussians with ``inv_sq = sum_i steps_i /
    z_i^2`` through RDP (Mironov 2017 Prop. 7 and Prop. 1; conversion by Canonne, Kamath and
    Steinke 2020, Prop. 12, over :data:`RDP_ORDERS`)."""
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1). Found {delta!r}.")
    if inv_sq < 0 or math.isnan(inv_sq):
        raise ValueError(f"`inv_sq` must be >= 0. Found {inv_sq!r}.")
    if math.isinf(inv_sq):
        return math.inf
    if inv_sq == 0:
        return 0.0
    orders = np.asarray(RDP_ORDERS)
    rdp = orders * inv_sq / 2.0
    eps = np.full(orders.shape, np.inf)
    # where delta^2 + expm1(-rdp) > 0, the KL bound alone gives eps = 0 (as dp-accounting)
    kl = delta**2 + np.expm1(-rdp) > 0
    ok = ~kl & (orders > 1.01)
    eps[kl] = 0.0
    eps[ok] = rdp[ok] + np.log1p(-1.0 / orders[ok]) - np.log(delta * orders[ok]) / (orders[ok] - 1)
    return max(0.0, float(eps.min()))
