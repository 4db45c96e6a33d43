"""What a Wanda mask says about its calibration statistics: the score (gradient) of a mask likelihood.

Wanda keeps weight (i, j) of a row when ``log|W_ij| + u_j`` is among the row's largest, with
``u_j = 0.5 log S_j`` and ``S_j = ||X_j||^2`` the squared input-column norm (Sun et al. 2024, Eq. 1).
We model "kept" as Bernoulli with ``p_ij = sigmoid(beta (log|W_ij| + u_j - v_i))`` (a Rasch /
Bradley-Terry style model, as in :mod:`secprune.attacks.inversion`), with the row threshold ``v_i`` set
so that the model keeps the row's observed fraction. At the attacker's prior ``u = 0.5 log S_bar`` (the
public expectation of the statistic) the derivative of the log-likelihood of an observed view ``y`` is

    g_j = d log L / d u_j = beta * sum_i (y_ij - p_ij)              (summed over matrices sharing input j).

``g`` is Rao's score statistic (Rao 1948): the locally most powerful direction for a small change of
``u``. Layer-0 statistics are sums over windows and, for q/k/v, over tokens (their input is
``input_layernorm(E[t])``, a function of the token alone), so the evidence that a window (or a token) is
in the client's data is linear in its own statistic:

    score(window w) = sum_j g_j s_wj / (2 S_bar_j),        score(token t) = sum_j g_j a_tj^2 / (2 S_bar_j),

(d u_j / d S_j = 1 / (2 S_j)). The token form powers the combined token-recovery attack
(:func:`secprune.attacks.inversion.token_evidence`); ``y`` may be a 0/1 kept mask, a kept *fraction*
(vote sums, noisy sums: a mean-field use of the same model) or the final mask's kept bits.
"""

from __future__ import annotations

import torch


def row_thresholds(*, base: torch.Tensor, valid: torch.Tensor, kept_fraction: torch.Tensor, beta: float,
                   iters: int = 40) -> torch.Tensor:
    """v_i with mean over valid j of sigmoid(beta (base_ij - v_i)) = kept_fraction_i (bisection per row)."""
    big = torch.finfo(base.dtype).max / 4
    b = torch.where(valid, base, torch.zeros_like(base))
    lo = torch.where(valid, base, torch.full_like(base, big)).min(1).values - 30.0 / beta
    hi = torch.where(valid, base, torch.full_like(base, -big)).max(1).values + 30.0 / beta
    n = valid.sum(1).clamp_min(1)
    target = kept_fraction.clamp(1e-6, 1 - 1e-6)
    for _ in range(iters):
        mid = (lo + hi) / 2
        frac = (torch.sigmoid(beta * (b - mid.view(-1, 1))) * valid).sum(1) / n
        too_many = frac > target  # threshold too low: raise it
        lo = torch.where(too_many, mid, lo)
        hi = torch.where(too_many, hi, mid)
    return (lo + hi) / 2


def column_scores(*, kept: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], prior_sq: dict[str, torch.Tensor],
                  beta: float = 8.0) -> dict[str, torch.Tensor]:
    """g per matrix (over its input columns): Rao score of the observed kept view at the prior statistic.

    ``kept[name]`` is (rows, cols) in [0, 1]; ``weights[name]`` the public weight; ``prior_sq[name]`` the
    attacker's expected squared column norms S_bar (cols,). Weights that are exactly zero are always
    pruned whatever the data, so they are left out of the likelihood.
    """
    out = {}
    for name, y in kept.items():
        w = weights[name].double()
        valid = w != 0
        base = torch.log(w.abs().clamp_min(1e-300)) + 0.5 * torch.log(prior_sq[name].double().clamp_min(1e-300)
                                                                       ).view(1, -1)
        yv = y.double().clamp(0, 1)
        frac = (yv * valid).sum(1) / valid.sum(1).clamp_min(1)
        v = row_thresholds(base=base, valid=valid, kept_fraction=frac, beta=beta)
        p = torch.sigmoid(beta * (base - v.view(-1, 1)))
        out[name] = beta * ((yv - p) * valid).sum(0)
    return out
