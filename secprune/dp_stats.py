"""Differential privacy at the source: the calibration statistics are privatized on the client, before any
mask is computed, so every mask, vote count, final mask and pruned weight after them is post-processing.

Each calibration *unit* (one window, or a whole client) contributes one vector to a matrix's statistic: Wanda's
per-input-feature sums of squares (in,), SparseGPT's ``X^T X`` (in, in). A contribution is normalized to unit
L2 norm (Frobenius for the Hessian), so adding or removing a window moves the sum by at most 1; a client's
whole statistic is normalized instead with ``unit="client"`` (any two datasets of one client: at most 2).
Every release adds Gaussian noise of standard deviation ``sensitivity * sigma``; the Hessian gets symmetric
noise (iid upper triangle, mirrored: "Analyze Gauss", Dwork, Talwar, Thakurta & Zhang, STOC 2014, Alg. 1) and
is projected back onto the positive semidefinite cone (post-processing).

Accounting. Releases are adaptive (a one-shot client's deeper layers see its own earlier pruned layers, an
iterative client the server's masks): the composition of Gaussian mechanisms with noise multipliers
``sigma_i`` is, adaptively, exactly the Gaussian mechanism of multiplier ``(sum_i sigma_i^-2)^-1/2``
(Dong, Roth & Su 2022, J. R. Stat. Soc. B, Cor. 3.3: mu-GDP composes as ``sqrt(sum mu_i^2)``). The budget is
therefore one number, ``sum_i sigma_i^-2``, that the client spends release by release and may not exceed; its
(epsilon, delta) is that one Gaussian's exact curve (Balle & Wang 2018), and ``summary.json`` also states
what ``dp_accounting``'s privacy-loss-distribution accountant certifies for it (tests compare both with the PLD
and RDP accountants of the composed events themselves).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

UNITS = ("window", "client")
ACCOUNTANT = "Gaussian composition via GDP (Dong et al. 2022), analytic epsilon (Balle & Wang 2018)"


def gaussian_delta(*, sigma: float, epsilon: float) -> float:
    """delta(epsilon) of the Gaussian mechanism with noise multiplier ``sigma`` (sensitivity 1), exactly:
    ``Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)`` (Balle & Wang, ICML 2018, Thm. 8)."""
    from scipy.special import log_ndtr

    a, b = 1 / (2 * sigma) - epsilon * sigma, -1 / (2 * sigma) - epsilon * sigma
    return max(0.0, math.exp(log_ndtr(a)) - math.exp(epsilon + log_ndtr(b)))


def epsilon_for_sigma(*, sigma: float, delta: float) -> float:
    """The smallest epsilon at which the Gaussian mechanism of multiplier ``sigma`` is (epsilon, delta)-DP
    (bisection on :func:`gaussian_delta`, which decreases in epsilon; errs upwards by < 1e-6)."""
    if sigma <= 0:
        return math.inf
    if gaussian_delta(sigma=sigma, epsilon=0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(sigma=sigma, epsilon=hi) > delta:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-7 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(sigma=sigma, epsilon=mid) > delta else (lo, mid)
    return hi


def pld_epsilon(*, sigma: float, delta: float) -> float:
    """The same epsilon from ``dp_accounting``'s privacy-loss-distribution accountant (maintained by Google's
    DP team; pessimistic discretisation, so at or slightly above :func:`epsilon_for_sigma`)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(sigma))
    return float(acc.get_epsilon(delta))


def sigma_for_epsilon(*, epsilon: float, delta: float) -> float:
    """The smallest noise multiplier whose Gaussian mechanism is (``epsilon``, ``delta``)-DP (bisection on
    :func:`epsilon_for_sigma`, which decreases in sigma); errs on the side of more noise."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"--dp-epsilon must be > 0 and --dp-delta in (0, 1), got {epsilon}, {delta}")
    lo, hi = 1e-3, 1.0
    while epsilon_for_sigma(sigma=hi, delta=delta) > epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-7 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon_for_sigma(sigma=mid, delta=delta) > epsilon else (lo, mid)
    return hi


def normalize_units(contrib: torch.Tensor) -> torch.Tensor:
    """Each unit's contribution (leading dim) scaled to L2 (Frobenius) norm 1; a zero contribution stays 0."""
    norms = contrib.flatten(1).norm(dim=1).clamp_min(torch.finfo(contrib.dtype).tiny)
    return contrib / norms.view(-1, *([1] * (contrib.dim() - 1)))


def gaussian_noise(shape: tuple[int, ...], *, std: float, symmetric: bool, generator: torch.Generator,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """N(0, std^2) per entry; with ``symmetric`` the last two dims carry one draw per upper-triangle entry,
    mirrored (Analyze Gauss), so a matrix of Frobenius sensitivity 1 has upper-triangle sensitivity <= 1."""
    z = torch.randn(shape, generator=generator, dtype=torch.float64).mul_(std)
    if symmetric:
        upper = torch.triu(z)
        z = upper + torch.triu(z, diagonal=1).transpose(-1, -2)
    return z.to(dtype=dtype, device=device)


def psd_project(h: torch.Tensor) -> torch.Tensor:
    """The nearest (Frobenius) positive semidefinite matrix of a symmetric ``h``: negative eigenvalues to 0."""
    vals, vecs = torch.linalg.eigh(h.double())
    return ((vecs * vals.clamp_min(0).unsqueeze(-2)) @ vecs.transpose(-1, -2)).to(h.dtype)


def os_generator() -> torch.Generator:
    """Noise the server cannot predict: seeded from the operating system's randomness, never from --seed."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))


class BudgetExhausted(RuntimeError):
    """A release would spend more than the client's privacy budget; nothing is released."""


@dataclass
class Budget:
    """One client's budget in units of ``sum_i sigma_i^-2`` over its releases (module docstring): ``total``
    from the target (epsilon, delta), shared equally by ``visits`` layer visits and, inside a visit, by the
    distinct statistics it releases. ``spent`` grows with every release and never passes ``total``."""

    epsilon: float
    delta: float
    visits: int
    total: float = 0.0
    spent: float = 0.0
    releases: int = 0

    def __post_init__(self) -> None:
        if self.visits < 1:
            raise ValueError(f"visits must be >= 1, got {self.visits}")
        if not self.total:
            self.total = sigma_for_epsilon(epsilon=self.epsilon, delta=self.delta) ** -2

    def multiplier(self, *, distinct: int) -> float:
        """The noise multiplier of one of ``distinct`` releases of one visit."""
        return math.sqrt(self.visits * distinct / self.total)

    def spend(self, sigma: float) -> None:
        cost = sigma ** -2
        if self.spent + cost > self.total * (1 + 1e-9):
            raise BudgetExhausted(f"--dp statistics: releasing one more statistic would exceed the budget "
                                  f"(epsilon {self.epsilon}, delta {self.delta}) after {self.releases} releases "
                                  f"over {self.visits} planned layer visits; refused")
        self.spent += cost
        self.releases += 1

    def epsilon_spent(self) -> float:
        return 0.0 if self.spent == 0 else epsilon_for_sigma(sigma=self.spent ** -0.5, delta=self.delta)

    def pld_epsilon_spent(self) -> float:
        return 0.0 if self.spent == 0 else pld_epsilon(sigma=self.spent ** -0.5, delta=self.delta)

    def state(self) -> dict:
        return {"spent": self.spent, "releases": self.releases}

    def load(self, state: dict) -> None:
        self.spent, self.releases = float(state["spent"]), int(state["releases"])
