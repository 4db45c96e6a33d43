"""Epsilon estimators against mechanisms whose epsilon is known, and against the reference implementation.

* Randomized response on synthetic bits is exactly eps-DP and no test beats it: a valid lower bound stays
  below eps (up to its 5% failure rate) and a large budget brings it close.
* The one-run bound (Steinke, Nasr & Jagielski 2023) matches ``jax_privacy.auditing`` on the same guesses.
* AUC intervals cover the true AUC; thresholds are the best midpoints; low-FPR points know their limits.
"""

import importlib.util
import math
import pathlib
import sys

import numpy as np
import pytest
from scipy.stats import binom, norm

from secprune.audits import epsilon as E
from secprune.audits import one_run as O


def _rr_trials(rng, eps, n):
    """Scores of the optimal test on RR(bit): the released bit (members hold 1, non-members 0)."""
    q = 1 / (1 + math.exp(eps))
    members = (rng.random(n) >= q).astype(float)  # 1 unless flipped
    non = (rng.random(n) < q).astype(float)
    return members, non


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_trial_bound_is_valid_and_tight_on_randomized_response(eps):
    rng = np.random.default_rng(int(eps * 10))
    bounds = []
    for rep in range(40):
        si, so = _rr_trials(rng, eps, 4000)
        bounds.append(E.empirical_epsilon(si, so, seed=rep, delta=0.0)["eps_lower_bound"])
    bounds = np.array(bounds)
    assert (bounds > eps).mean() <= 0.1  # a 95% lower confidence bound: rarely above the truth
    assert bounds.mean() == pytest.approx(eps, abs=0.2 + 0.05 * eps)  # and close with 2000 + 2000 bound trials


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_one_run_bound_is_valid_and_close_on_randomized_response(eps):
    rng = np.random.default_rng(7)
    q = 1 / (1 + math.exp(eps))
    bounds = []
    for _ in range(20):
        m = 4000
        inc = rng.random(m) < 0.5
        out = np.where(rng.random(m) < q, ~inc, inc).astype(float)  # RR of the inclusion bit
        scores = out + 1e-6 * rng.random(m)  # break ties at random
        bounds.append(O.audit(scores=scores, included=inc, delta=1e-6)["eps_lower_bound"])
    bounds = np.array(bounds)
    assert (bounds > eps).mean() <= 0.1
    assert bounds.mean() > eps - 0.25 and bounds.mean() <= eps + 0.05


def test_data_free_scores_certify_nothing():
    rng = np.random.default_rng(0)
    x = rng.normal(size=3000)
    y = rng.normal(size=3000)
    assert E.empirical_epsilon(x, y, seed=1)["eps_lower_bound"] < 0.2
    inc = rng.random(3000) < 0.5
    assert O.audit(scores=rng.normal(size=3000), included=inc, delta=1e-5)["eps_lower_bound"] < 0.2
    assert E.empirical_epsilon(np.zeros(50), np.zeros(50))["eps_lower_bound"] == 0.0


def test_one_run_p_value_against_its_definition():
    # Theorem 5.2 written out term by term with pmf sums (an independent computation of the same formula)
    for m, r, v, eps, delta in [(100, 40, 35, 1.0, 1e-3), (1000, 200, 150, 0.7, 1e-5), (50, 10, 10, 2.0, 0.0)]:
        q = math.exp(eps) / (1 + math.exp(eps))
        tail = sum(binom.pmf(j, r, q) for j in range(v, r + 1))
        alpha = max(sum(binom.pmf(j, r, q) for j in range(v - i, v)) / i for i in range(1, v + 1))
        want = min(tail + 2 * m * delta * alpha, 1.0)
        got = O.p_value(canaries=m, guesses=r, correct=v, eps=eps, delta=delta)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    # the bound is the root of p(eps) = significance
    e = O.epsilon_lower_bound(canaries=1000, guesses=200, correct=170, delta=1e-5)
    assert O.p_value(canaries=1000, guesses=200, correct=170, eps=e, delta=1e-5) == pytest.approx(0.05, rel=1e-4)
    assert O.epsilon_lower_bound(canaries=100, guesses=10, correct=5, delta=1e-5) == 0.0


def _anchor():
    """jax_privacy/auditing.py loaded on its own (the package's __init__ needs jax)."""
    spec = importlib.util.find_spec("jax_privacy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("jax-privacy (reference implementation) is not installed: pip install --no-deps jax-privacy "
                    "dp-accounting")
    pytest.importorskip("dp_accounting")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "auditing.py"
    mod_spec = importlib.util.spec_from_file_location("jax_privacy_auditing_anchor", path)
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = mod
    mod_spec.loader.exec_module(mod)
    return mod


def test_one_run_and_clopper_pearson_match_the_reference_on_the_same_guesses():
    ref = _anchor()
    rng = np.random.default_rng(3)
    for _ in range(4):
        si, so = rng.normal(1.5, 1, 300), rng.normal(0, 1, 300)
        aud = ref.CanaryScoreAuditor(si, so)
        for t in (0.3, 1.1, 2.2):  # thresholds that are no score: 'score >= t' = 'score > t'
            want = aud.epsilon_one_run(0.05, 1e-5, threshold_strategy=ref.Explicit(t))
            r, v = int((si >= t).sum() + (so >= t).sum()), int((si >= t).sum())
            got = O.epsilon_lower_bound(canaries=600, guesses=r, correct=v, delta=1e-5, significance=0.05)
            assert got == pytest.approx(want, abs=2e-5)
            want_cp = aud.epsilon_clopper_pearson(0.05, 1e-5, one_sided=False, threshold_strategy=ref.Explicit(t))
            got_cp = E.eps_at_threshold(scores_in=si, scores_out=so, threshold=t, delta=1e-5)["eps_lower_bound"]
            assert got_cp == pytest.approx(want_cp, rel=1e-9)
        for m, r, v, eps, delta in [(600, 200, 160, 0.8, 1e-5), (100, 30, 28, 1.5, 1e-3)]:
            assert O.p_value(canaries=m, guesses=r, correct=v, eps=eps, delta=delta) == pytest.approx(
                ref._one_run_p_value(m, r, v, eps, delta), rel=1e-9)


def test_guesses_grid_and_bonferroni():
    g = O.guesses_from_scores(scores=[0.1, 0.9, 0.5, 0.2, 0.8], k_plus=2, k_minus=1)
    assert g.tolist() == [-1, 1, 0, 0, 1]
    scores = np.arange(100.0)
    inc = scores >= 50
    res = O.audit(scores=scores, included=inc, delta=1e-5)
    assert res["per_test_significance"] == pytest.approx(0.05 / len(O.default_grid(100)))
    assert res["best"]["correct"] == res["best"]["guesses"]  # perfect scores: every guess right
    assert res["eps_lower_bound"] == pytest.approx(res["max_attainable"])
    # the ceiling respects how many canaries were actually included
    inc2 = scores >= 90
    assert O.audit(scores=scores, included=inc2, delta=1e-5)["max_attainable"] < res["max_attainable"]


def test_auc_interval_covers_the_true_auc():
    rng = np.random.default_rng(11)
    d = 0.8
    true = float(norm.cdf(d / math.sqrt(2)))
    hits = 0
    for _ in range(200):
        r = E.auc_ci(scores_in=rng.normal(d, 1, 60), scores_out=rng.normal(0, 1, 80))
        hits += r["lo"] <= true <= r["hi"]
        assert r["lo"] <= r["auc"] <= r["hi"]
    assert hits >= 180  # nominal 95%
    # perfect separation: the exact bound (alpha/2)^(1/min(n)), valid because P(separation) <= AUC^n
    r = E.auc_ci(scores_in=np.arange(10) + 100, scores_out=np.arange(20))
    assert r["auc"] == 1.0 and r["lo"] == pytest.approx(0.025 ** (1 / 10)) and r["hi"] == 1.0
    sim = rng.normal(1.0, 1, (4000, 10)).min(1) > rng.normal(0, 1, (4000, 20)).max(1)
    assert sim.mean() <= float(norm.cdf(1 / math.sqrt(2))) ** 10 + 0.01


def test_best_threshold_is_the_best_midpoint_and_split_halves_are_disjoint():
    rng = np.random.default_rng(2)
    si, so = rng.normal(1, 1, 41), rng.normal(0, 1, 37)
    thr, eps = E.best_threshold(scores_in=si, scores_out=so, delta=1e-5)
    u = np.unique(np.concatenate([si, so]))
    brute = max(((m, E.eps_at_threshold(scores_in=si, scores_out=so, threshold=m, delta=1e-5)["eps_lower_bound"])
                 for m in np.concatenate([[-np.inf], (u[1:] + u[:-1]) / 2, [np.inf]])), key=lambda x: x[1])
    assert eps == pytest.approx(brute[1]) and E.eps_at_threshold(
        scores_in=si, scores_out=so, threshold=thr, delta=1e-5)["eps_lower_bound"] == pytest.approx(eps)
    assert not np.any(np.isin(thr, np.concatenate([si, so])))  # a midpoint, never an observed score
    res = E.empirical_epsilon(si, so, seed=0)
    assert res["trials_select"]["members"] + res["trials_bound"]["members"] == 41
    assert res["trials_select"]["non_members"] + res["trials_bound"]["non_members"] == 37
    assert res["max_attainable"] == pytest.approx(E.max_attainable_epsilon(n_in=res["trials_bound"]["members"],
                                                                          n_out=res["trials_bound"]["non_members"],
                                                                          delta=1e-5))


def test_grouped_bound_normalises_on_the_selection_half_only():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(3), 40)
    shift = np.array([0.0, 100.0, -50.0])[groups]  # three targets on very different scales
    si = rng.normal(2, 1, 120) + shift
    so = rng.normal(0, 1, 120) + shift
    g = E.empirical_epsilon(si, so, groups_in=groups, groups_out=groups, seed=5)
    raw = E.empirical_epsilon(si, so, seed=5)
    assert g["eps_lower_bound"] > raw["eps_lower_bound"]  # normalisation recovers the per-target signal
    assert E.auc(g["bound_half"]["in"], g["bound_half"]["out"]) > E.auc(si, so)
    # the normalisation of each target is the mean / sd of exactly its non-members outside the bound half
    bound_out = np.asarray(g["bound_half"]["out"])
    for t in range(3):
        mu, sd = g["normalisation"][str(t)]
        raw_t = so[groups == t]
        back = bound_out * sd + mu  # undo the normalisation: the bound half's raw scores
        in_bound = np.isclose(raw_t[:, None], back[None, :], rtol=0, atol=1e-9).any(1)
        assert in_bound.sum() == 20
        sel = raw_t[~in_bound]
        assert mu == pytest.approx(sel.mean()) and sd == pytest.approx(sel.std(ddof=1))
    assert g["trials_bound"]["members"] == 60 and g["trials_bound"]["non_members"] == 60


def test_low_fpr_points_say_when_they_cannot_be_resolved():
    rng = np.random.default_rng(1)
    si, so = rng.normal(3, 1, 300), rng.normal(0, 1, 256)
    r = E.tpr_at_fpr(scores_in=si, scores_out=so, fpr=0.001)
    assert r["fp"] == 0 and not r["resolved"]  # 0 of 256 only shows FPR <= 1.4%
    assert r["fpr_ub"] == pytest.approx(1 - 0.025 ** (1 / 256))
    assert r["non_members_needed"] == E.fpr_needed(target=0.001) and r["non_members_needed"] > 1800
    big = E.tpr_at_fpr(scores_in=si, scores_out=rng.normal(0, 1, 20_000), fpr=0.01)
    assert big["resolved"] and big["tpr_ci"][0] <= big["tpr"] <= big["tpr_ci"][1]
    s = E.summarize(np.arange(100, 200), np.arange(0, 100))
    assert s["auc"] == 1.0 and not s["low_fpr_resolvable"]["0.1pct"]
