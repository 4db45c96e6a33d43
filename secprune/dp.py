"""Differential privacy for what FedPrLLM shares: randomized response on mask bits, noisy vote counts.

Two mechanisms, each with its accounting:

* **Randomized response** (Warner 1965) on every mask bit before upload: keep a bit with probability
  ``1 - q`` and flip it with ``q = 1 / (1 + e^eps_bit)``; each bit is ``eps_bit``-LDP. Two masks that
  differ in ``h`` bits give outputs whose privacy loss is exactly ``h * eps_bit`` (pure DP composes
  additively, Dwork & Roth 2014 Thm. 3.16). The Renyi-DP curve of one flipped bit,
  ``D_a = 1/(a-1) log((1-q)^a q^(1-a) + q^a (1-q)^(1-a))`` (Mironov 2017, Def. 3 applied to two
  Bernoulli laws), composes additively over ``h`` bits and converts to (eps, delta) with opacus'
  ``get_privacy_spent``, which is tighter than ``h * eps_bit`` when ``h`` is large.
* **Skellam noise on vote counts inside the secure sum** (Agarwal, Kairouz & Liu 2021): each client
  adds its share ``Poisson(mu) - Poisson(mu)`` to every entry of its vote vector before the secure
  summation (:func:`client_noise_share`, run client-side; :class:`secprune.dp_sum.NoisySum` wires it into
  the pipeline), so the server only learns counts + ``Sk(m mu, m mu)`` (variance ``2 m mu``; the Skellam
  family is closed under sums). :func:`distributed_skellam_accounting` states what holds with dropouts
  and colluding clients. One client's mask changes each count by at most 1, so for ``h``
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
    if sd > GAUSSIAN_LIMIT_SD:  # the numerical sum would need ~80 sd terms: use the proven upper bound
        # of Agarwal, Kairouz & Liu 2021 (Skellam mechanism RDP, Sec. 3) with L1 = L2 = |shift|:
        # a D2^2 / (4 lam) + min(((2a - 1) D2^2 + 6 D1) / (16 lam^2), 3 D1 / (4 lam))
        d = abs(shift)
        return a * d * d / (4 * lam) + np.minimum(((2 * a - 1) * d * d + 6 * d) / (16 * lam * lam), 3 * d / (4 * lam))
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


# ---------------------------------------------------------------- distributed Skellam noise (client side)
def skellam_share_log_tail(*, mu: float, bound: int) -> float:
    """log of a Chernoff upper bound on P(|X| > bound) for one share X = Poisson(mu) - Poisson(mu).

    P(X >= b) <= exp(-b t + 2 mu (cosh t - 1)) for every t > 0 (the mgf of X is exp(2 mu (cosh t - 1)));
    t = asinh(b / (2 mu)) minimizes it. Two-sided, b = bound + 1.
    """
    if mu <= 0:
        return -math.inf
    b = bound + 1.0
    t = math.asinh(b / (2 * mu))
    return math.log(2.0) - b * t + 2 * mu * (math.sqrt(1 + (b / (2 * mu)) ** 2) - 1)


def skellam_share_bound(*, mu: float, log_tail: float = -200.0) -> int:
    """Smallest integer clip bound B with P(|share| > B) <= e^log_tail (Chernoff bound above)."""
    if mu <= 0:
        return 0
    hi = 1
    while skellam_share_log_tail(mu=mu, bound=hi) > log_tail:
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if skellam_share_log_tail(mu=mu, bound=mid) > log_tail:
            lo = mid
        else:
            hi = mid
    return hi


def client_noise_share(*, size: int, mu: float, bound: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One client's noise share for a secure sum (Agarwal, Kairouz & Liu 2021, the distributed Skellam
    mechanism): ``Poisson(mu) - Poisson(mu)`` per entry, clipped to ``[-bound, bound]`` so that the
    submission fits the secure sum's range. Returns (share int64, number of clipped entries).

    Runs on the client, in its own process, with its own unpredictable generator; the server never sees
    a share, only the sum of all submissions.
    """
    raw = rng.poisson(mu, size).astype(np.int64) - rng.poisson(mu, size).astype(np.int64)
    clipped = int(np.count_nonzero(np.abs(raw) > bound))
    return np.clip(raw, -bound, bound), clipped


def client_submission(*, vector: np.ndarray, share: np.ndarray, bound: int) -> np.ndarray:
    """What a client submits to the secure sum: ``vector + share + bound`` (all in ``[0, max + 2 bound]``),
    followed by one entry equal to 1 that counts the clients whose submission arrived, so that the server
    can remove the public offsets (``survivors * bound``) whoever dropped out."""
    body = np.asarray(vector, dtype=np.int64) + share + bound
    return np.concatenate([body, np.ones(1, dtype=np.int64)])


def server_unoffset(*, total: np.ndarray, bound: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`client_submission` on the secure sum's output: (noisy sum, survivors)."""
    survivors = int(total[-1])
    return np.asarray(total[:-1], dtype=np.int64) - survivors * bound, survivors


def distributed_skellam_accounting(*, lam: float, n_clients: int, dropouts: int, colluders: int, entries: int,
                                   delta: float, secure: bool, log_tail: float = -200.0) -> dict:
    """(eps, delta) of FedPrLLM vote sums with distributed Skellam noise, with its assumptions stated.

    Each client adds ``Sk(mu, mu)`` with ``mu = lam / (m - dropouts - colluders)`` to every entry, so that
    the honest clients that survive (at least ``m - dropouts - colluders``, the client being protected
    among them) add at least ``Sk(lam, lam)`` (Skellam laws add up): the *guaranteed* noise, valid when at
    most ``dropouts`` clients drop and at most ``colluders`` share their noise with the server. With
    every client present and honest the noise is ``Sk(m mu, m mu)`` (*nominal*). Without secure
    aggregation the server sees each submission alone: only the client's own share ``Sk(mu, mu)``
    protects it.

    Sensitivity: one client (or one of its windows) can change every bit of its top-k mask, so each of
    the ``entries`` counts moves by at most 1: RDP ``entries * D_a(Sk + 1 || Sk)`` (:func:`skellam_epsilon`,
    numerically exact). Clipping each share at ``B`` (probability at most ``p = e^log_tail`` per share and
    entry, Chernoff) changes the output only on an event of probability ``P <= entries * m * p``; that adds
    ``(1 + e^eps) P`` to delta.
    """
    honest = n_clients - dropouts - colluders
    if honest < 1:
        raise ValueError(f"dropouts ({dropouts}) + colluders ({colluders}) must leave an honest client "
                         f"of {n_clients}")
    mu = lam / honest
    guaranteed = lam if secure else mu
    nominal = mu * n_clients if secure else mu
    res = skellam_epsilon(guaranteed, h=max(entries, 1), delta=delta)
    res_nom = skellam_epsilon(nominal, h=max(entries, 1), delta=delta)
    log_p_clip = log_tail + math.log(max(entries, 1) * n_clients)
    eps = res["eps"]
    clip_delta = math.exp(min(log_p_clip + math.log1p(math.exp(min(eps, 700.0))), 0.0))
    vacuous = eps > 100  # then e^eps makes the clipping term (and any guarantee) meaningless
    return {"mechanism": "skellam", "lam": lam, "share_mu": mu, "clients": n_clients,
            "note": ("epsilon > 100: no meaningful guarantee (the clipping term (1 + e^eps) P of delta_total is "
                     "capped at 1)") if vacuous else "",
            "dropouts_assumed": dropouts, "colluders_assumed": colluders, "secure_aggregation": secure,
            "noise_lam_guaranteed": guaranteed, "noise_lam_nominal": nominal,
            "noise_sd_guaranteed": math.sqrt(2 * guaranteed), "entries": entries, "sensitivity_h": entries,
            "delta": delta, "epsilon": eps, "epsilon_nominal": res_nom["eps"], "best_order": res["best_order"],
            "clip_log_tail_per_share": log_tail, "clip_delta": clip_delta, "delta_total": delta + clip_delta,
            "assumptions": (f"client-level (and window-level) neighbours; one client can change all {entries} "
                            "mask bits it sends (top-k), each count by at most 1; at most "
                            f"{dropouts} dropouts and {colluders} clients colluding with the server; "
                            + ("noise added inside the secure sum" if secure else
                               "no secure aggregation: the server sees each noisy submission, only the "
                               "client's own share protects it"))}


def skellam_noise(shape: tuple[int, ...], *, lam: float, rng: np.random.Generator) -> np.ndarray:
    """Sk(lam, lam) samples: the law of the sum of every client's (unclipped) share."""
    return rng.poisson(lam, size=shape).astype(np.int64) - rng.poisson(lam, size=shape).astype(np.int64)
