"""Differential privacy for what FedPrLLM shares: randomized response on mask bits, noisy vote counts.

Two mechanisms, each with its accounting:

* **Randomized response** (Warner 1965) on every mask bit before upload: keep a bit with probability
  ``1 - q`` and flip it with ``q = 1 / (1 + e^eps_bit)``; each bit is ``eps_bit``-LDP. Two masks that
  differ in ``h`` bits give outputs whose privacy loss is exactly ``h * eps_bit`` (pure DP composes
  additively, Dwork & Roth 2014 Thm. 3.16). The Renyi-DP curve of one flipped bit,
  ``D_a = 1/(a-1) log((1-q)^a q^(1-a) + q^a (1-q)^(1-a))`` (Mironov 2017, Def. 3 applied to two
  Bernoulli laws), composes additively over ``h`` bits and converts to (eps, delta) with opacus'
  ``get_privacy_spent``, which is tighter than ``h * eps_bit`` when ``h`` is large.
* **Skellam noise on vote counts inside the secure sum** (Agarwal, Kairouz & Liu 2021): each of the
  ``m`` clients adds ``Poisson(lam/m) - Poisson(lam/m)`` to every entry of its vote vector before the
  secure summation, so the server only learns counts + ``Sk(lam, lam)`` (variance ``2 lam``; the Skellam
  family is closed under sums). One client's mask changes each count by at most 1, so for ``h``
  differing bits the RDP is ``h * D_a(Sk || Sk + 1)``; we compute this Renyi divergence numerically
  from the Skellam pmf (scipy), because opacus covers the continuous Gaussian only. The continuous
  Gaussian reference (noise ``N(0, 2 lam)``, L2 sensitivity ``sqrt(h)``) uses opacus' RDP accountant.

**The sensitivity ``h`` is the crux.** A Wanda mask is a deterministic top-k of data-dependent scores:
one calibration window (or one client) can move every threshold, so the worst-case number of bits it
changes is *all of them* (``h = n_bits``: with exactly k pruned per row, two masks differ in at most
every bit). Only that worst case gives a guarantee. We also report epsilon at the *empirical*
sensitivity (the largest Hamming change seen in the sensitivity audit); that number is a heuristic
summary, **not** a differential-privacy guarantee, and reports label it so. Without any noise the
mechanism is deterministic and epsilon is unbounded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

GAUSSIAN_LIMIT_SD = 3000.0  # above this Skellam standard deviation the RDP uses its Gaussian limit
DEFAULT_ORDERS = [1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 128, 256, 512, 1024]


def _spent(orders, rdp, delta) -> tuple[float, float]:
    """opacus' RDP -> (eps, delta) conversion; its 'extend the orders' warnings are expected at extremes."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, best = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps), float(best)


# ---------------------------------------------------------------- randomized response
def flip_probability(eps_bit: float) -> float:
    """q = 1 / (1 + e^eps): the flip probability that makes one bit eps-LDP."""
    if eps_bit == math.inf:
        return 0.0
    return 1.0 / (1.0 + math.exp(eps_bit))


def randomized_response(mask: torch.Tensor, eps_bit: float, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
    """Flip every bit of a bool mask independently with probability ``flip_probability(eps_bit)``."""
    q = flip_probability(eps_bit)
    if q == 0.0:
        return mask.clone()
    flips = torch.rand(mask.shape, generator=generator) < q
    return mask ^ flips


def rr_noisy_counts(counts: torch.Tensor, n_clients: int, eps_bit: float, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum of ``n_clients`` randomized-response bits given the true vote counts, sampled exactly.

    A count ``c`` becomes ``Binomial(c, 1 - q) + Binomial(m - c, q)``; its law depends only on ``c``, so we
    tabulate the m+1 cumulative distributions once and invert one uniform draw per entry.
    """
    from scipy.stats import binom

    m, q = n_clients, flip_probability(eps_bit)
    table = np.zeros((m + 1, m + 1))
    for c in range(m + 1):
        table[c] = np.convolve(binom.pmf(np.arange(c + 1), c, 1 - q), binom.pmf(np.arange(m - c + 1), m - c, q))
    cdf = torch.from_numpy(np.cumsum(table, axis=1)[:, :-1]).float()  # (m+1, m): P(noisy <= j), j < m
    flat = counts.reshape(-1).long()
    u = torch.rand(flat.shape, generator=generator)
    out = torch.empty_like(flat)
    step = max(1, (1 << 22) // max(m, 1))
    for s in range(0, flat.numel(), step):  # noisy = #{j < m : u >= P(noisy <= j)}
        out[s:s + step] = (u[s:s + step].unsqueeze(1) >= cdf[flat[s:s + step]]).sum(1)
    return out.view(counts.shape)


def rr_rdp(eps_bit: float, orders: list[float] | float) -> np.ndarray:
    """Renyi DP of randomized response on one bit, for each order a > 1 (exact; see module doc)."""
    a = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    q = flip_probability(eps_bit)
    if q == 0.0:
        return np.full_like(a, np.inf)
    lq, l1q = math.log(q), math.log1p(-q)
    t1 = a * l1q + (1 - a) * lq
    t2 = a * lq + (1 - a) * l1q
    return np.logaddexp(t1, t2) / (a - 1)


def rr_epsilon(eps_bit: float, *, h: int, delta: float, orders: list[float] | None = None) -> dict:
    """Privacy of randomized response for neighbours whose masks differ in at most ``h`` bits."""
    orders = orders or DEFAULT_ORDERS
    pure = h * eps_bit
    rdp = h * rr_rdp(eps_bit, orders)
    eps_rdp, best = _spent(orders, rdp.tolist(), delta)
    return {"eps_pure": pure, "eps_rdp": float(min(eps_rdp, pure)), "delta": delta, "h": h, "best_order": best}


# ---------------------------------------------------------------- Skellam noise on counts
def skellam_rdp(lam: float, orders: list[float] | float, *, shift: int = 1) -> np.ndarray:
    """D_a( Sk(lam, lam) + shift || Sk(lam, lam) ) for every order, summed numerically over the support."""
    from scipy.special import ive

    a = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    sd = math.sqrt(2 * lam)
    if sd > GAUSSIAN_LIMIT_SD:  # Gaussian limit a * shift^2 / (2 var); relative error O(1/lam), tested
        return a * shift * shift / (2 * 2 * lam)
    span = int(math.ceil(40 * sd + 60 + abs(shift) * 40))
    k = np.arange(-span, span + 1)
    with np.errstate(divide="ignore"):  # Sk(lam, lam) pmf = e^{-2 lam} I_|k|(2 lam) = ive(|k|, 2 lam)
        lq = np.log(ive(np.abs(k), 2 * lam))
        lp = np.log(ive(np.abs(k - shift), 2 * lam))  # P: shifted
    ok = np.isfinite(lp) & np.isfinite(lq)
    lp, lq = lp[ok], lq[ok]
    out = np.empty_like(a)
    for i, ai in enumerate(a):
        terms = ai * lp + (1 - ai) * lq
        m = terms.max()
        out[i] = (m + math.log(np.exp(terms - m).sum())) / (ai - 1)
    return np.maximum(out, 0.0)


def skellam_epsilon(lam: float, *, h: int, delta: float, orders: list[float] | None = None) -> dict:
    """(eps, delta) of counts + Sk(lam, lam) when one client's (or sample's) mask changes <= h counts by 1."""
    orders = orders or DEFAULT_ORDERS
    rdp = h * skellam_rdp(lam, orders)
    eps, best = _spent(orders, rdp.tolist(), delta)
    return {"eps": float(eps), "delta": delta, "h": h, "lam": lam, "variance": 2 * lam, "best_order": best}


def gaussian_epsilon(sigma: float, *, h: int, delta: float, steps: int = 1, orders: list[float] | None = None
                     ) -> dict:
    """Continuous Gaussian reference via opacus' RDP accountant: L2 sensitivity sqrt(h), noise std sigma."""
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = orders or DEFAULT_ORDERS
    z = sigma / math.sqrt(h)
    rdp = compute_rdp(q=1.0, noise_multiplier=z, steps=steps, orders=orders)
    eps, best = _spent(orders, rdp, delta)
    return {"eps": float(eps), "delta": delta, "h": h, "sigma": sigma, "noise_multiplier": z, "best_order": best}


def lam_for_epsilon(eps: float, *, h: int, delta: float, lo: float = 1e-3, hi: float = 1e14) -> float:
    """Smallest Skellam parameter lam (geometric bisection) with skellam_epsilon <= eps."""
    if skellam_epsilon(hi, h=h, delta=delta)["eps"] > eps:
        return hi
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if skellam_epsilon(mid, h=h, delta=delta)["eps"] > eps:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return hi


def skellam_shares(shape: tuple[int, ...], *, lam: float, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each client's noise share Poisson(lam/m) - Poisson(lam/m); their sum is Sk(lam, lam)."""
    part = lam / n_clients
    return [rng.poisson(part, size=shape).astype(np.int64) - rng.poisson(part, size=shape).astype(np.int64)
            for _ in range(n_clients)]


def noisy_secure_sum(vectors: list[np.ndarray], *, lam: float, rng: np.random.Generator, summer=None,
                     key: str = "noisy") -> np.ndarray:
    """Counts + Skellam noise computed *inside* the secure sum: the server never sees noise-free counts.

    Secure-sum backends take non-negative integers in ``[0, max_value]``, so every client submits
    ``vote + share + B`` with an offset ``B`` (public) and the server subtracts ``m * B``. Shares beyond
    ``+-B`` (probability below 1e-12 per entry for ``B = 14 sd + 4``) are clipped; that tail adds to delta.
    """
    m = len(vectors)
    shares = skellam_shares(vectors[0].shape, lam=lam, n_clients=m, rng=rng)
    sd = math.sqrt(2 * lam / m)
    bound = int(math.ceil(14 * sd + 4))
    subm = [np.asarray(v, dtype=np.int64) + np.clip(s, -bound, bound) + bound
            for v, s in zip(vectors, shares, strict=True)]
    if summer is None:
        total = np.sum(subm, axis=0)
    else:
        total = np.asarray(summer.sum(key, subm), dtype=np.int64)
    return total - m * bound


@dataclass
class Mechanism:
    """A noise setting of the defence: ``kind`` is 'rr' (eps per bit) or 'skellam' (lam)."""

    kind: str
    param: float

    def label(self) -> str:
        return f"RR eps_bit={self.param:g}" if self.kind == "rr" else f"Skellam lam={self.param:.3g}"


def noisy_counts_from_masks(client_masks, name: str, mech: Mechanism, *, rng: np.random.Generator,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """What the server sees for matrix ``name`` under ``mech``, from a MaskSet of client masks."""
    shape = client_masks.shapes[name]
    if mech.kind == "rr":
        total = torch.zeros(shape, dtype=torch.int64)
        for i in range(client_masks.n):
            total += randomized_response(client_masks.get(i, name), mech.param, generator=generator).to(torch.int64)
        return total
    if mech.kind == "skellam":
        vecs = [client_masks.flat(i, name) for i in range(client_masks.n)]
        return torch.from_numpy(noisy_secure_sum(vecs, lam=mech.param, rng=rng)).view(shape)
    raise ValueError(f"unknown mechanism {mech.kind!r}; expected 'rr' or 'skellam'")
