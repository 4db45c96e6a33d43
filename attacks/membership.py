"""Membership inference against shared pruning masks, in three views.

Game (Carlini et al. 2022, Sec. III-A, adapted to calibration sets): a client holds ``k`` windows drawn
from a public population. For a target window ``w`` the challenger flips a fair coin; "in": the
client's set is ``w`` plus ``k - 1`` population windows, "out": ``k`` population windows. The attacker
sees one view of the resulting mask and outputs a score (higher = member).

Views:
* ``own``: the client's own layer-0 mask (no secure aggregation);
* ``sum``: the vote count over ``m`` clients, the target client's mask plus ``m - 1`` others' (what secure
  aggregation reveals);
* ``rr``: the own mask after randomized response with ``eps_bit`` (:mod:`secprune.dp`);
* ``noisy_sum``: the sum plus Skellam noise added inside the secure sum.

Attacks:
* ``hamming`` -- the paper's signal (FedPrLLM App. C): the observed mask is compared with the mask of
  the target window alone and with the population's majority mask; score = distance to the majority
  minus distance to the target's own mask (L1 distance of counts in the sum views).
* ``lira`` -- likelihood ratio with shadow calibration sets (Carlini et al. 2022, Eq. 4, with per-bit
  Bernoulli models instead of Gaussians over logits): from ``N_in`` shadow sets that contain ``w`` and
  ``N_out`` that do not, every bit gets p_in, p_out (Laplace smoothing); the own-mask score is the
  log-likelihood ratio summed over bits, assuming bits independent. For RR the attacker knows ``q`` and
  uses p' = p (1 - q) + (1 - p) q. For sums the count of bit b is modelled as a Gaussian with mean
  p_in + (m - 1) p_out (in) or m p_out (out) and the matching Bernoulli variances (+ 2 lam noise).

Only layer-0 masks are used (exact and cheap, see :mod:`audits.engine`); deeper layers would only add
signal, so these are lower bounds on what an attacker learns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from secprune.audits.engine import LayerZeroMasks
from secprune.audits.epsilon import empirical_epsilon, summarize
from secprune.dp import flip_probability

VIEWS = ("own", "sum", "rr", "noisy_sum")


@dataclass
class MIABudget:
    targets: int = 8
    shadows_in: int = 16
    shadows_out: int = 48
    eval_in: int = 6  # member trials per target
    eval_out: int = 48  # shared non-member masks (each scored against every target)
    client_size: int = 2  # windows per client
    n_clients: int = 16  # for the sum views
    rr_eps: float = 2.0
    skellam_lam: float = 50.0
    seed: int = 0


def _draw(rng: np.random.Generator, population: np.ndarray, k: int) -> np.ndarray:
    return rng.choice(population, size=k, replace=False)


class _Scorer:
    """Per-target attack models built from shadow masks."""

    def __init__(self, p_in: torch.Tensor, p_out: torch.Tensor, solo: torch.Tensor, majority: torch.Tensor,
                 budget: MIABudget, active: torch.Tensor) -> None:
        # LiRA uses the bits that vary in some shadow set: the others add (almost) the same constant to
        # every score. The Hamming attack uses every bit.
        self.active = active
        self.p_out_full = p_out.float()
        p_in, p_out = p_in[active], p_out[active]
        self.p_in, self.p_out = p_in, p_out
        self.solo, self.majority = solo.float(), majority.float()
        self.m = budget.n_clients
        q = flip_probability(budget.rr_eps)
        self.q = q
        self.lam = budget.skellam_lam
        # Bernoulli LLR, linear in x: x * w1 + (1 - x) * w0
        self.w1 = torch.log(p_in) - torch.log(p_out)
        self.w0 = torch.log1p(-p_in) - torch.log1p(-p_out)
        pr_in, pr_out = p_in * (1 - q) + (1 - p_in) * q, p_out * (1 - q) + (1 - p_out) * q
        self.r1 = torch.log(pr_in) - torch.log(pr_out)
        self.r0 = torch.log1p(-pr_in) - torch.log1p(-pr_out)
        m = self.m
        self.mu_in = p_in + (m - 1) * p_out
        self.mu_out = m * p_out
        self.var_in = p_in * (1 - p_in) + (m - 1) * p_out * (1 - p_out)
        self.var_out = m * p_out * (1 - p_out)
        self.solo_sum = self.solo + (m - 1) * self.p_out_full
        self.maj_sum = m * self.p_out_full

    def _gauss(self, y: torch.Tensor, extra_var: float) -> float:
        vi, vo = self.var_in + extra_var, self.var_out + extra_var
        ll_in = -0.5 * (y - self.mu_in).pow(2) / vi - 0.5 * torch.log(vi)
        ll_out = -0.5 * (y - self.mu_out).pow(2) / vo - 0.5 * torch.log(vo)
        return float((ll_in - ll_out).sum())

    def score(self, view: str, obs: torch.Tensor) -> dict[str, float]:
        x = obs.float()
        xa = x[self.active].double()
        if view in ("own", "rr"):
            w1, w0 = (self.w1, self.w0) if view == "own" else (self.r1, self.r0)
            lira = float((xa * w1 + (1 - xa) * w0).sum())
            ham = float((x - self.majority).abs().sum() - (x - self.solo).abs().sum())
        else:
            lira = self._gauss(xa, 0.0 if view == "sum" else 2.0 * self.lam)
            ham = float((x - self.maj_sum).abs().sum() - (x - self.solo_sum).abs().sum())
        return {"lira": lira, "hamming": ham}


def _views(own: torch.Tensor, others_sum: torch.Tensor, budget: MIABudget, gen: torch.Generator,
           rng: np.random.Generator) -> dict[str, torch.Tensor]:
    q = flip_probability(budget.rr_eps)
    rr = own ^ (torch.rand(own.shape, generator=gen) < q)
    s = own.to(torch.int32) + others_sum
    noise = rng.poisson(budget.skellam_lam, size=s.shape) - rng.poisson(budget.skellam_lam, size=s.shape)
    return {"own": own, "sum": s, "rr": rr, "noisy_sum": s + torch.from_numpy(noise.astype(np.int32))}


def run_membership(engine: LayerZeroMasks, *, targets: np.ndarray, population: np.ndarray, budget: MIABudget,
                   progress=None) -> dict:
    """Run both attacks in every view; returns metrics per (attack, view) plus raw scores.

    ``targets`` and ``population`` index ``engine.pool``; the population is split in two halves: the
    attacker's shadow half and the challenger's evaluation half (disjoint windows).
    """
    rng = np.random.default_rng(budget.seed)
    gen = torch.Generator().manual_seed(budget.seed)
    pop = rng.permutation(population)
    shadow_pop, eval_pop = pop[: len(pop) // 2], pop[len(pop) // 2:]
    k = budget.client_size
    if len(shadow_pop) < k or len(eval_pop) < max(k, 1):
        raise ValueError(f"population of {len(population)} windows is too small for clients of {k} windows")
    tick = progress or (lambda *_: None)

    # attacker: out-shadows (shared by all targets)
    out_sum = torch.zeros(engine.layout.size, dtype=torch.int32)
    for _ in range(budget.shadows_out):
        out_sum += engine.flat(_draw(rng, shadow_pop, k)).to(torch.int32)
        tick("mia")
    n_o = budget.shadows_out
    p_out = (out_sum.double() + 1) / (n_o + 2)
    majority = out_sum * 2 > n_o

    # challenger: non-member masks and the other clients' masks for the sum views
    eval_out = [engine.flat(_draw(rng, eval_pop, k)) for _ in range(budget.eval_out)]
    for _ in eval_out:
        tick("mia")
    others_pool = [engine.flat(_draw(rng, eval_pop, k)) for _ in range(max(budget.n_clients - 1, 1) * 2)]
    for _ in others_pool:
        tick("mia")

    def others_sum() -> torch.Tensor:
        pick = rng.choice(len(others_pool), size=budget.n_clients - 1, replace=False)
        s = torch.zeros(engine.layout.size, dtype=torch.int32)
        for j in pick:
            s += others_pool[j].to(torch.int32)
        return s

    out_views = [_views(msk, others_sum(), budget, gen, rng) for msk in eval_out]
    scores = {a: {v: {"in": [], "out": []} for v in VIEWS} for a in ("lira", "hamming")}
    for t in targets:
        t = int(t)
        in_sum = torch.zeros(engine.layout.size, dtype=torch.int32)
        for _ in range(budget.shadows_in):
            rest = _draw(rng, shadow_pop[shadow_pop != t], k - 1)
            in_sum += engine.flat(np.concatenate([[t], rest])).to(torch.int32)
            tick("mia")
        p_in = (in_sum.double() + 1) / (budget.shadows_in + 2)
        active = torch.nonzero(((in_sum > 0) | (out_sum > 0)) & ((in_sum < budget.shadows_in) | (out_sum < n_o))
                               ).view(-1)
        scorer = _Scorer(p_in, p_out, engine.flat([t]), majority, budget, active)
        for _ in range(budget.eval_in):
            rest = _draw(rng, eval_pop[eval_pop != t], k - 1)
            views = _views(engine.flat(np.concatenate([[t], rest])), others_sum(), budget, gen, rng)
            tick("mia")
            for v in VIEWS:
                for a, s in scorer.score(v, views[v]).items():
                    scores[a][v]["in"].append(s)
        for views in out_views:
            for v in VIEWS:
                for a, s in scorer.score(v, views[v]).items():
                    scores[a][v]["out"].append(s)

    results = {}
    for a in scores:
        for v in VIEWS:
            si, so = scores[a][v]["in"], scores[a][v]["out"]
            res = summarize(si, so)
            res["empirical_epsilon"] = empirical_epsilon(si, so, seed=budget.seed)
            res["scores"] = {"in": si, "out": so}
            results[f"{a}/{v}"] = res
    return {"budget": asdict(budget), "layer": 0, "matrices": engine.layout.names, "bits": engine.layout.size,
            "non_member_note": "each of the eval_out non-member masks is scored against every target model",
            "results": results}


def signal_strength(engine: LayerZeroMasks, *, targets: np.ndarray, population: np.ndarray, k: int,
                    draws: int, seed: int = 0) -> dict:
    """The paper's MIA number: Hamming distance between masks with and without the target (same other windows)."""
    rng = np.random.default_rng(seed)
    vals = []
    for t in targets:
        for _ in range(draws):
            rest = _draw(rng, population[population != t], k)
            without = engine.flat(rest)
            with_t = engine.flat(np.concatenate([[int(t)], rest[: k - 1]]))
            vals.append(float((with_t != without).float().mean()))
    return {"hamming_with_vs_without": vals, "mean": float(np.mean(vals)) if vals else float("nan"),
            "definition": "mask(target + k-1 others) vs mask(the same k-1 others + one more window): replace"}
