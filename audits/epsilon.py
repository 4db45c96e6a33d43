"""Attack metrics and empirical lower bounds on epsilon.

* ROC, AUC (ties count one half), TPR at a fixed FPR, balanced accuracy (Carlini et al. 2022,
  "Membership Inference Attacks From First Principles", Sec. III: report TPR at low FPR, log-log ROC).
* Clopper-Pearson intervals (Clopper & Pearson 1934) from the beta distribution.
* Empirical epsilon (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021): any (eps, delta)-DP mechanism
  satisfies FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta for every test, hence with
  upper confidence bounds FPR_ub, FNR_ub (each at level alpha/2, jointly 1 - alpha):

      eps_lb = max( log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub), 0 ).

  The threshold is chosen on one half of the trials (the one maximizing the point estimate) and the
  bound is computed on the other half, so the choice does not bias the bound.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta


def roc(scores_in, scores_out) -> dict:
    """ROC of 'member if score >= threshold': arrays fpr, tpr, thresholds (descending), plus AUC."""
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    thr = np.unique(np.concatenate([si, so]))[::-1]
    si_sorted, so_sorted = np.sort(si), np.sort(so)
    tpr = 1.0 - np.searchsorted(si_sorted, thr, side="left") / max(len(si), 1)
    fpr = 1.0 - np.searchsorted(so_sorted, thr, side="left") / max(len(so), 1)
    fpr = np.concatenate([[0.0], fpr])
    tpr = np.concatenate([[0.0], tpr])
    return {"fpr": fpr, "tpr": tpr, "thresholds": np.concatenate([[np.inf], thr]), "auc": auc(si, so)}


def auc(scores_in, scores_out) -> float:
    """P(score_in > score_out) + 0.5 P(tie) (Mann-Whitney)."""
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if len(si) == 0 or len(so) == 0:
        return float("nan")
    allv = np.concatenate([si, so])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    i = 0
    while i < len(sorted_v):
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_in = ranks[: len(si)].sum()
    return float((r_in - len(si) * (len(si) + 1) / 2.0) / (len(si) * len(so)))


def tpr_at_fpr(curve: dict, target: float) -> float:
    ok = curve["fpr"] <= target + 1e-12
    return float(curve["tpr"][ok].max()) if ok.any() else 0.0


def balanced_accuracy(curve: dict) -> float:
    return float(np.max((curve["tpr"] + 1.0 - curve["fpr"]) / 2.0))


def summarize(scores_in, scores_out) -> dict:
    """Everything reports need about one attack: counts, AUC, TPR@1%/0.1% FPR, balanced accuracy, ROC."""
    c = roc(scores_in, scores_out)
    n_out = len(scores_out)
    return {
        "members": len(scores_in), "non_members": n_out, "auc": c["auc"],
        "tpr_at_1pct_fpr": tpr_at_fpr(c, 0.01), "tpr_at_0.1pct_fpr": tpr_at_fpr(c, 0.001),
        "low_fpr_resolvable": {"1pct": n_out >= 100, "0.1pct": n_out >= 1000},
        "balanced_accuracy": balanced_accuracy(c),
        "roc": {"fpr": c["fpr"].tolist(), "tpr": c["tpr"].tolist()},
    }


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) Clopper-Pearson interval for a binomial proportion k / n."""
    if n <= 0:
        raise ValueError("clopper_pearson needs n >= 1")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def eps_lower_bound(fp: int, n_neg: int, fn: int, n_pos: int, *, alpha: float = 0.05, delta: float = 0.0) -> float:
    """Empirical epsilon lower bound from false positives / negatives (see module doc); 0 if none."""
    fpr_ub = clopper_pearson(fp, n_neg, alpha)[1]
    fnr_ub = clopper_pearson(fn, n_pos, alpha)[1]
    cands = [0.0]
    if 1 - delta - fnr_ub > 0 and fpr_ub > 0:
        cands.append(math.log((1 - delta - fnr_ub) / fpr_ub))
    if 1 - delta - fpr_ub > 0 and fnr_ub > 0:
        cands.append(math.log((1 - delta - fpr_ub) / fnr_ub))
    return max(cands)


def _point_eps(si: np.ndarray, so: np.ndarray, thr: float, delta: float) -> float:
    tpr = float((si >= thr).mean())
    fpr = float((so >= thr).mean())
    fnr = 1 - tpr
    vals = [0.0]
    # point estimate with a +0.5 continuity guard so empty cells do not give infinity
    fpr_s = (fpr * len(so) + 0.5) / (len(so) + 1)
    fnr_s = (fnr * len(si) + 0.5) / (len(si) + 1)
    if 1 - delta - fnr_s > 0:
        vals.append(math.log((1 - delta - fnr_s) / fpr_s))
    if 1 - delta - fpr_s > 0:
        vals.append(math.log((1 - delta - fpr_s) / fnr_s))
    return max(vals)


def empirical_epsilon(scores_in, scores_out, *, alpha: float = 0.05, delta: float = 1e-5, seed: int = 0) -> dict:
    """Lower bound on epsilon from an attack's scores: threshold on a random half, Clopper-Pearson on the rest."""
    rng = np.random.default_rng(seed)
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    pi, po = rng.permutation(len(si)), rng.permutation(len(so))
    si_a, si_b = si[pi[: len(si) // 2]], si[pi[len(si) // 2:]]
    so_a, so_b = so[po[: len(so) // 2]], so[po[len(so) // 2:]]
    cands = np.unique(np.concatenate([si_a, so_a, [np.inf]]))
    best = max(cands, key=lambda t: _point_eps(si_a, so_a, t, delta)) if len(cands) else np.inf
    fp, fn = int((so_b >= best).sum()), int((si_b < best).sum())
    lb = eps_lower_bound(fp, len(so_b), fn, len(si_b), alpha=alpha, delta=delta)
    return {"eps_lower_bound": lb, "alpha": alpha, "delta": delta, "threshold": float(best),
            "threshold_rule": "maximizes the point estimate on a random half of the trials; bound on the other half",
            "trials_select": {"members": len(si_a), "non_members": len(so_a)},
            "trials_bound": {"members": len(si_b), "non_members": len(so_b)},
            "false_positives": fp, "false_negatives": fn,
            "fpr_ub": clopper_pearson(fp, max(len(so_b), 1), alpha)[1] if len(so_b) else 1.0,
            "fnr_ub": clopper_pearson(fn, max(len(si_b), 1), alpha)[1] if len(si_b) else 1.0}
