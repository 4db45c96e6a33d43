"""One-run auditing (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training Run").

Game: ``m`` canaries, each included in the input independently with probability 1/2 (S_i = +-1). The
mechanism runs *once*; the auditor scores every canary and guesses "in" (+1) for its ``k_plus`` highest
scores, "out" (-1) for its ``k_minus`` lowest and abstains on the rest. Let ``r = k_plus + k_minus``
guesses and ``v`` the correct ones. Their Theorem 5.2: if the mechanism is (eps, delta)-DP then for
every ``v``

    P[W >= v] <= beta + 2 m delta alpha,
    beta  = P[Binomial(r, q) >= v],             q = e^eps / (1 + e^eps)   (eps-DP randomized response),
    alpha = max_{1 <= i <= v}  P[v > Binomial(r, q) >= v - i] / i.

So an observed ``v`` with p-value below the significance level rejects (eps, delta)-DP, and the largest
rejected eps is a lower bound (``epsilon_lower_bound``). For delta = 0 the bound is exactly the binomial
tail (their Proposition 5.4 / Theorem 5.2 with delta = 0).

Choosing ``k_plus, k_minus`` after looking at the scores would invalidate the test; :func:`audit` tries a
fixed grid of guess counts and applies a Bonferroni correction over the grid (significance / |grid| each),
so the reported maximum is valid at the stated significance.

Anchors: ``jax_privacy.auditing.CanaryScoreAuditor.epsilon_one_run`` (one-sided guesses at an explicit
threshold) gives the same numbers on the same guesses; ``tests/test_audit_stats.py`` checks it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binom


def p_value(*, canaries: int, guesses: int, correct: int, eps: float, delta: float) -> float:
    """Upper bound on P[at least ``correct`` of ``guesses`` right] under (eps, delta)-DP (Thm 5.2)."""
    m, r, v = canaries, guesses, correct
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and delta in [0, 1], got eps={eps}, delta={delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    between = binom.sf(v - i - 1, r, q) - tail  # P[v > Bin >= v - i] = P[Bin >= v - i] - P[Bin >= v]
    alpha = float(np.max(between / i))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float,
                        significance: float = 0.05) -> float:
    """The largest eps whose (eps, delta)-DP claim the observed guesses reject at ``significance``.

    The p-value grows with eps, so the bound is the root of p_value(eps) = significance (Brent's method
    after doubling an upper bracket); 0 if even eps = 0 is not rejected.
    """
    if not 0 < significance < 1:
        raise ValueError(f"significance must lie in (0, 1), got {significance}")

    def gap(e: float) -> float:
        return significance - p_value(canaries=canaries, guesses=guesses, correct=correct, eps=e, delta=delta)

    if guesses == 0 or gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2
        if hi > 1e4:  # p-value never reaches the level (cannot happen for delta > 0 and v <= r)
            return math.inf
    return float(brentq(gap, hi / 2 if hi > 1 else 0.0, hi, xtol=1e-7))


def guesses_from_scores(*, scores, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, 0 (abstain) elsewhere."""
    s = np.asarray(scores, dtype=np.float64)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(s):
        raise ValueError(f"need 0 <= k_plus + k_minus <= {len(s)}, got {k_plus} + {k_minus}")
    order = np.argsort(-s, kind="stable")
    g = np.zeros(len(s), dtype=np.int64)
    g[order[:k_plus]] = 1
    if k_minus:
        g[order[len(s) - k_minus:]] = -1
    return g


def default_grid(m: int) -> list[tuple[int, int]]:
    """(k_plus, k_minus) pairs tried by :func:`audit`: one- and two-sided guesses, k = m/16 .. 7m/16."""
    grid = set()
    for frac in (1 / 16, 1 / 8, 1 / 4, 3 / 8, 7 / 16):
        k = max(1, int(round(frac * m)))
        grid.add((k, 0))
        if 2 * k <= m:
            grid.add((k, k))
    return sorted(grid)


def audit(*, scores, included, delta: float, significance: float = 0.05,
          grid: list[tuple[int, int]] | None = None) -> dict:
    """One-run epsilon lower bound from per-canary scores and the true inclusion bits.

    Every grid point is tested at significance / len(grid) (Bonferroni), so the maximum over the grid
    is a valid (1 - significance) lower bound. Returns the best point with its guesses and correct ones.
    """
    s = np.asarray(scores, dtype=np.float64)
    b = np.asarray(included, dtype=bool)
    m = len(s)
    if m == 0 or len(b) != m:
        raise ValueError(f"scores and included must have the same non-zero length, got {m} and {len(b)}")
    grid = grid or default_grid(m)
    level = significance / len(grid)
    truth = np.where(b, 1, -1)
    rows = []
    for kp, km in grid:
        g = guesses_from_scores(scores=s, k_plus=kp, k_minus=km)
        r = int((g != 0).sum())
        v = int((g == truth).sum())
        eps = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, significance=level)
        rows.append({"k_plus": kp, "k_minus": km, "guesses": r, "correct": v, "eps_lower_bound": eps})
    best = max(rows, key=lambda x: x["eps_lower_bound"])
    # what a perfect scorer could certify on this grid with these inclusions (the ceiling of this budget)
    n_in, n_out = int(b.sum()), int((~b).sum())
    ceiling = max(epsilon_lower_bound(canaries=m, guesses=kp + km, correct=min(kp, n_in) + min(km, n_out),
                                      delta=delta, significance=level) for kp, km in grid)
    return {"eps_lower_bound": best["eps_lower_bound"], "best": best, "grid": rows, "canaries": m,
            "included": int(b.sum()), "delta": delta, "significance": significance,
            "per_test_significance": level, "max_attainable": ceiling,
            "rule": "guess in for the k+ highest scores, out for the k- lowest; Bonferroni over the grid"}
