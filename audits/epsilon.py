"""Attack metrics and empirical lower bounds on epsilon, with the confidence each one carries.

Every function here treats one score as one *trial*: one independent output of the audited mechanism
(a fresh calibration set, a fresh mask, fresh noise). Scores that reuse a mechanism output (one mask
scored against several targets) are correlated and must not be passed in as separate trials; the
membership game in :mod:`secprune.attacks.membership` builds one mask per trial.

* ROC and AUC (ties count one half); a DeLong et al. (1988) confidence interval for the AUC
  (structural components, normal approximation on the logit scale, Pepe 2003 Sec. 5.2.2).
* TPR at a fixed FPR with its Clopper-Pearson interval, and whether the non-member count can resolve
  that FPR at all (:func:`tpr_at_fpr`).
* Clopper-Pearson intervals (Clopper & Pearson 1934) from the beta distribution.
* Empirical epsilon (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021): every (eps, delta)-DP mechanism
  satisfies FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta for every test, hence with
  upper confidence bounds FPR_ub, FNR_ub (each at level alpha/2, jointly 1 - alpha)::

      eps_lb = max( log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub), 0 ).

  :func:`empirical_epsilon` splits the *trials* at random into a selection half and a bound half,
  chooses the threshold on the selection half by this very bound (candidates: midpoints between
  consecutive distinct scores), and evaluates the bound once, on the bound half (the "Split" strategy
  of Nasr et al. 2023 and of ``jax_privacy.auditing``). :func:`max_attainable_epsilon` gives what a
  perfect attack could certify with the same trial counts: the ceiling a reader should compare with.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, norm


# ---------------------------------------------------------------- ROC and AUC
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


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values, broadcast to its members
    new = np.concatenate([[True], xs[1:] != xs[:-1]])
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(xs)]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(scores_in, scores_out) -> float:
    """P(score_in > score_out) + 0.5 P(tie) (Mann-Whitney U / (n_in n_out))."""
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if len(si) == 0 or len(so) == 0:
        return float("nan")
    ranks = _midranks(np.concatenate([si, so]))
    r_in = ranks[: len(si)].sum()
    return float((r_in - len(si) * (len(si) + 1) / 2.0) / (len(si) * len(so)))


def auc_ci(*, scores_in, scores_out, alpha: float = 0.05) -> dict:
    """AUC with a (1 - alpha) DeLong interval (DeLong, DeLong & Clarke-Pearson 1988).

    Structural components: V10_i = P(out < in_i) + 0.5 P(out = in_i) over the non-members, V01_j likewise;
    Var(AUC) = S10 / n_in + S01 / n_out. The interval is built on logit(AUC) (delta method) so that it
    stays inside [0, 1]. When every pair is ordered (AUC 0 or 1, zero variance) we use an exact bound
    instead: perfect separation implies that ``n = min(n_in, n_out)`` disjoint (member, non-member) pairs
    are each ordered, an event of probability ``AUC^n`` for independent trials, so AUC < (alpha/2)^(1/n) is
    rejected at level alpha/2 and the interval is [(alpha/2)^(1/n), 1] (mirrored for AUC 0).
    """
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    n1, n0 = len(si), len(so)
    if n1 == 0 or n0 == 0:
        return {"auc": float("nan"), "lo": float("nan"), "hi": float("nan"), "method": "none"}
    allr = _midranks(np.concatenate([si, so]))
    a = (allr[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    r_in, r_out = _midranks(si), _midranks(so)
    v10 = (allr[:n1] - r_in) / n0  # for each member: fraction of non-members below it (ties half)
    v01 = 1.0 - (allr[n1:] - r_out) / n1  # for each non-member: fraction of members above it
    s10 = float(np.var(v10, ddof=1)) if n1 > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n0 > 1 else 0.0
    var = s10 / n1 + s01 / n0
    z = norm.ppf(1 - alpha / 2)
    if var <= 0 or a <= 0 or a >= 1:
        edge = (alpha / 2) ** (1.0 / min(n1, n0))  # perfect separation on every trial of the smaller class
        if a >= 0.5:
            return {"auc": float(a), "lo": float(edge), "hi": 1.0, "method": "perfect-separation"}
        return {"auc": float(a), "lo": 0.0, "hi": float(1 - edge), "method": "perfect-separation"}
    lg = math.log(a / (1 - a))
    se = math.sqrt(var) / (a * (1 - a))
    lo, hi = 1 / (1 + math.exp(-(lg - z * se))), 1 / (1 + math.exp(-(lg + z * se)))
    return {"auc": float(a), "lo": float(lo), "hi": float(hi), "method": "delong-logit", "se": math.sqrt(var)}


def balanced_accuracy(curve: dict) -> float:
    return float(np.max((curve["tpr"] + 1.0 - curve["fpr"]) / 2.0))


# ---------------------------------------------------------------- binomial bounds
def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) Clopper-Pearson interval for a binomial proportion k / n."""
    if n <= 0:
        raise ValueError("clopper_pearson needs n >= 1")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _cp_upper(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Vectorised upper end of the two-sided (1 - alpha) Clopper-Pearson interval."""
    k = np.asarray(k)
    out = np.ones(k.shape, dtype=np.float64)
    ok = k < n
    out[ok] = beta.ppf(1 - alpha / 2, k[ok] + 1, n - k[ok])
    return out


def _eps_from_ubs(fpr_ub: np.ndarray, fnr_ub: np.ndarray, delta: float) -> np.ndarray:
    """max(log((1-delta-FNR_ub)/FPR_ub), log((1-delta-FPR_ub)/FNR_ub), 0), elementwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where((1 - delta - fnr_ub > 0) & (fpr_ub > 0), np.log(np.clip(1 - delta - fnr_ub, 1e-300, None))
                     - np.log(np.clip(fpr_ub, 1e-300, None)), 0.0)
        b = np.where((1 - delta - fpr_ub > 0) & (fnr_ub > 0), np.log(np.clip(1 - delta - fpr_ub, 1e-300, None))
                     - np.log(np.clip(fnr_ub, 1e-300, None)), 0.0)
    return np.maximum(np.maximum(a, b), 0.0)


def eps_lower_bound(fp: int, n_neg: int, fn: int, n_pos: int, *, alpha: float = 0.05, delta: float = 0.0) -> float:
    """Empirical epsilon lower bound from false positives / negatives at one fixed threshold (module doc)."""
    fpr_ub = _cp_upper(np.array([fp]), n_neg, alpha)
    fnr_ub = _cp_upper(np.array([fn]), n_pos, alpha)
    return float(_eps_from_ubs(fpr_ub, fnr_ub, delta)[0])


def max_attainable_epsilon(*, n_in: int, n_out: int, alpha: float = 0.05, delta: float = 0.0) -> float:
    """The bound a perfect attack (no false positive or negative) certifies with these trial counts."""
    if n_in < 1 or n_out < 1:
        return 0.0
    return eps_lower_bound(0, n_out, 0, n_in, alpha=alpha, delta=delta)


def eps_at_threshold(*, scores_in, scores_out, threshold: float, alpha: float = 0.05, delta: float = 0.0) -> dict:
    """The bound of the test 'member if score > threshold' on the given trials, with its counts."""
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    fp, fn = int((so > threshold).sum()), int((si <= threshold).sum())
    return {"eps_lower_bound": eps_lower_bound(fp, len(so), fn, len(si), alpha=alpha, delta=delta),
            "false_positives": fp, "false_negatives": fn, "members": len(si), "non_members": len(so),
            "fpr_ub": clopper_pearson(fp, len(so), alpha)[1] if len(so) else 1.0,
            "fnr_ub": clopper_pearson(fn, len(si), alpha)[1] if len(si) else 1.0}


def best_threshold(*, scores_in, scores_out, alpha: float = 0.05, delta: float = 0.0) -> tuple[float, float]:
    """(threshold, bound) maximizing the Clopper-Pearson bound over midpoints between distinct scores.

    The candidates are -inf, +inf and every midpoint between consecutive distinct values of the pooled
    scores; the test is 'member if score > threshold'. Used on the selection half only.
    """
    si, so = np.sort(np.asarray(scores_in, dtype=np.float64)), np.sort(np.asarray(scores_out, dtype=np.float64))
    u = np.unique(np.concatenate([si, so]))
    cands = np.concatenate([[-np.inf], (u[1:] + u[:-1]) / 2.0, [np.inf]]) if len(u) else np.array([np.inf])
    fp = len(so) - np.searchsorted(so, cands, side="right")
    fn = np.searchsorted(si, cands, side="right")
    if len(si) == 0 or len(so) == 0:
        return float(cands[-1]), 0.0
    eps = _eps_from_ubs(_cp_upper(fp, len(so), alpha), _cp_upper(fn, len(si), alpha), delta)
    i = int(np.argmax(eps))
    return float(cands[i]), float(eps[i])


def _split(n: int, rng: np.random.Generator, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    p = rng.permutation(n)
    k = int(round(n * fraction))
    return p[:k], p[k:]


def _group_split(groups: np.ndarray, rng: np.random.Generator, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split trial indices into (selection, bound) halves within every group (stratified)."""
    sel, bnd = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        a, b = _split(len(idx), rng, fraction)
        sel.append(idx[a])
        bnd.append(idx[b])
    return np.sort(np.concatenate(sel)), np.sort(np.concatenate(bnd))


def empirical_epsilon(scores_in, scores_out, *, groups_in=None, groups_out=None, alpha: float = 0.05,
                      delta: float = 1e-5, seed: int = 0, select_fraction: float = 0.5) -> dict:
    """Lower bound on epsilon from independent trials: threshold chosen by the bound on a random half of
    the trials (midpoints), bound evaluated once on the other, disjoint half (module doc).

    With ``groups_in`` / ``groups_out`` (e.g. the target of each trial) the halves are split within every
    group and scores of different groups are put on one scale before pooling: each group's scores are
    standardised by the mean and standard deviation of *its non-member scores in the selection half*, so
    the normalisation, like the threshold, never sees the bound half. ``bound_half`` returns the
    (normalised) bound-half scores, for the pooled ROC and AUC.

    Returns the bound with its counts, the bound the chosen threshold had on the selection half, and the
    most a perfect attack could certify with the bound half's counts (``max_attainable``).
    """
    rng = np.random.default_rng(seed)
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    norm = None
    if groups_in is None:
        ia, ib = _split(len(si), rng, select_fraction)
        oa, ob = _split(len(so), rng, select_fraction)
    else:
        gi, go = np.asarray(groups_in), np.asarray(groups_out)
        ia, ib = _group_split(gi, rng, select_fraction)
        oa, ob = _group_split(go, rng, select_fraction)
        norm = {}
        for g in np.unique(np.concatenate([gi, go])):
            ref = so[oa][go[oa] == g]
            mu = float(ref.mean()) if len(ref) else 0.0
            sd = float(ref.std(ddof=1)) if len(ref) > 1 else 0.0
            norm[g.item() if hasattr(g, "item") else g] = (mu, sd if sd > 0 else 1.0)
        si = np.array([(x - norm[g.item()][0]) / norm[g.item()][1] for x, g in zip(si, gi, strict=True)])
        so = np.array([(x - norm[g.item()][0]) / norm[g.item()][1] for x, g in zip(so, go, strict=True)])
    si_a, si_b, so_a, so_b = si[ia], si[ib], so[oa], so[ob]
    thr, eps_sel = best_threshold(scores_in=si_a, scores_out=so_a, alpha=alpha, delta=delta)
    res = eps_at_threshold(scores_in=si_b, scores_out=so_b, threshold=thr, alpha=alpha, delta=delta)
    out = {**res, "alpha": alpha, "delta": delta, "threshold": thr, "eps_on_selection_half": eps_sel,
           "threshold_rule": ("'member if score > t'; t maximizes the Clopper-Pearson bound over midpoints on a "
                              "random half of the trials; the bound is computed once on the other half"),
           "trials_select": {"members": len(si_a), "non_members": len(so_a)},
           "trials_bound": {"members": len(si_b), "non_members": len(so_b)},
           "max_attainable": max_attainable_epsilon(n_in=len(si_b), n_out=len(so_b), alpha=alpha, delta=delta),
           "bound_half": {"in": si_b.tolist(), "out": so_b.tolist()}}
    if norm is not None:
        out["normalisation"] = {str(k): list(v) for k, v in norm.items()}
        out["normalisation_rule"] = "per group: mean and sd of its non-member scores in the selection half"
    return out


# ---------------------------------------------------------------- low-FPR operating points
def fpr_needed(*, target: float, alpha: float = 0.05) -> int:
    """Non-member trials needed before an operating point with no false positive resolves ``target``:
    the smallest n with Clopper-Pearson upper bound 1 - (alpha/2)^(1/n) <= 2 * target."""
    return int(math.ceil(math.log(alpha / 2) / math.log1p(-min(2 * target, 0.999999))))


def tpr_at_fpr(*, scores_in, scores_out, fpr: float, alpha: float = 0.05) -> dict:
    """TPR of the most permissive threshold whose empirical FPR is <= ``fpr``, with its CP interval.

    ``resolved`` is False when the non-member trials cannot resolve the target: the Clopper-Pearson
    upper bound of the true FPR at that threshold exceeds twice the target (e.g. 0 false positives in
    256 trials only shows FPR <= 1.4%, so a "TPR at 0.1% FPR" from them is not a 0.1%-FPR figure).
    """
    si, so = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if len(si) == 0 or len(so) == 0:
        return {"fpr_target": fpr, "tpr": float("nan"), "resolved": False}
    so_desc = np.sort(so)[::-1]
    allowed = int(math.floor(fpr * len(so) + 1e-9))  # false positives allowed
    # member if score > thr, with thr = the (allowed+1)-th largest non-member score
    thr = so_desc[allowed] if allowed < len(so) else -np.inf
    tp = int((si > thr).sum())
    fp = int((so > thr).sum())
    fpr_ub = clopper_pearson(fp, len(so), alpha)[1]
    lo, hi = clopper_pearson(tp, len(si), alpha)
    return {"fpr_target": fpr, "tpr": tp / len(si), "tpr_ci": [lo, hi], "fp": fp, "fpr_ub": fpr_ub,
            "resolved": bool(fpr_ub <= 2 * fpr), "non_members_needed": fpr_needed(target=fpr, alpha=alpha)}


def summarize(scores_in, scores_out, *, alpha: float = 0.05) -> dict:
    """Everything reports need about one attack: counts, AUC with CI, TPR at 1% / 0.1% FPR (with whether
    they are resolved), balanced accuracy, ROC."""
    c = roc(scores_in, scores_out)
    ci = auc_ci(scores_in=scores_in, scores_out=scores_out, alpha=alpha)
    t1 = tpr_at_fpr(scores_in=scores_in, scores_out=scores_out, fpr=0.01, alpha=alpha)
    t01 = tpr_at_fpr(scores_in=scores_in, scores_out=scores_out, fpr=0.001, alpha=alpha)
    return {
        "members": len(scores_in), "non_members": len(scores_out), "auc": c["auc"], "auc_ci": [ci["lo"], ci["hi"]],
        "auc_ci_method": ci["method"], "tpr_at_1pct_fpr": t1["tpr"], "tpr_at_0.1pct_fpr": t01["tpr"],
        "low_fpr": {"1pct": t1, "0.1pct": t01},
        "low_fpr_resolvable": {"1pct": t1["resolved"], "0.1pct": t01["resolved"]},
        "balanced_accuracy": balanced_accuracy(c),
        "roc": {"fpr": c["fpr"].tolist(), "tpr": c["tpr"].tolist()},
    }
