"""Audits of ``--dp statistics`` on the noisy statistic itself, where the truth is known.

The mechanism audited is the product's own: :class:`~secprune.methods.private.Private` accumulating Wanda's
per-window contributions (each normalized to norm 1) and releasing the sum once with its Gaussian noise, for a
budget of one release, so the release is exactly (epsilon, delta)-DP per window. A canary is a window whose
contribution is one input feature (a single token with that feature at 1), the strongest a window can push
one coordinate; the auditor's score is that coordinate of the release (the likelihood-ratio test of two
Gaussians with the same variance). Both auditors must stay at or below epsilon; how close they come shows
what a lower bound of this kind can certify.

* :func:`trial_audit`: independent releases with and without the canary (plus background windows);
  :func:`secprune.audits.epsilon.empirical_epsilon` (threshold on one half, Clopper-Pearson bound on the other).
* :func:`one_run_audit`: one release holding each of ``m`` canaries (one feature each) with probability 1/2;
  :func:`secprune.audits.one_run.audit` (Steinke, Nasr & Jagielski 2023, Thm. 5.2).
"""

from __future__ import annotations

import numpy as np
import torch

from secprune.audits.epsilon import empirical_epsilon
from secprune.audits.one_run import audit as one_run
from secprune.dp_stats import Budget
from secprune.methods import Wanda
from secprune.methods.private import Private


def _windows(features: np.ndarray, d: int) -> torch.Tensor:
    """One window per entry: a single token whose only non-zero input is ``features[b]`` (x^2 sums to e_j)."""
    x = torch.zeros(len(features), 1, d, dtype=torch.float64)
    x[np.arange(len(features)), 0, features] = 1.0
    return x


def release(windows: torch.Tensor, *, epsilon: float, delta: float, generator: torch.Generator,
            total: float = 0.0) -> torch.Tensor:
    """One (epsilon, delta)-DP release of the statistic of ``windows`` (B, tokens, d), by the product's code
    (``total``: the budget's precision when the caller already calibrated it, see :class:`Budget`)."""
    priv = Private(Wanda(), epsilon=epsilon, delta=delta, visits=1, generator=generator, total=total)
    stats = priv.new_stats(n_clients=1, in_features=windows.shape[-1], device=torch.device("cpu"))
    if len(windows):
        priv.accumulate(stats, windows, torch.zeros(len(windows), dtype=torch.long))
    return priv.release({"m": stats})["m"][0]


def trial_audit(*, epsilon: float, delta: float = 1e-5, trials: int = 4000, background: int = 8, d: int = 16,
                seed: int = 0, alpha: float = 0.05) -> dict:
    """Empirical epsilon from ``trials`` releases with the canary and ``trials`` without."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = _windows(rng.integers(1, d, background), d)  # background windows never touch feature 0
    canary = _windows(np.array([0]), d)
    total = Budget(epsilon=epsilon, delta=delta, visits=1).total  # calibrated once, not per trial
    scores = {True: [], False: []}
    for member in (True, False):
        data = torch.cat([base, canary]) if member else base
        scores[member] = [float(release(data, epsilon=epsilon, delta=delta, generator=gen, total=total)[0])
                          for _ in range(trials)]
    res = empirical_epsilon(scores[True], scores[False], alpha=alpha, delta=delta, seed=seed)
    return {"epsilon": epsilon, "delta": delta, "trials": trials, "eps_lower_bound": res["eps_lower_bound"],
            "max_attainable": res["max_attainable"]}


def one_run_audit(*, epsilon: float, delta: float = 1e-5, canaries: int = 4000, seed: int = 0,
                  significance: float = 0.05) -> dict:
    """One-run epsilon lower bound from one release of ``canaries`` canaries, each in with probability 1/2."""
    gen = torch.Generator().manual_seed(seed)
    included = np.random.default_rng(seed).random(canaries) < 0.5
    data = _windows(np.flatnonzero(included), canaries)
    out = release(data, epsilon=epsilon, delta=delta, generator=gen)
    res = one_run(scores=out.numpy(), included=included, delta=delta, significance=significance)
    return {"epsilon": epsilon, "delta": delta, "canaries": canaries, "eps_lower_bound": res["eps_lower_bound"],
            "max_attainable": res["max_attainable"]}
