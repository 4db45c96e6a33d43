"""Membership inference against shared pruning masks, with independent trials, in five views.

Game (Carlini et al. 2022, Sec. III-A; the trial design of Jagielski et al. 2020 and Nasr et al. 2021):
the target window ``t`` is a window of the real run, held by client ``c(t)``. The other ``m - 1`` clients
keep their real data (their real layer-0 masks from the run: DP's "everything else fixed"). In every
trial the challenger draws a *fresh* calibration set for client ``c(t)`` from a public pool: "in" =
``t`` plus ``k - 1`` pool windows, "out" = ``k`` pool windows; one fresh mask, fresh noise and a fresh
final mask per trial, so trials are independent given the pool (a replace-one neighbouring relation;
a DP mechanism bounds every such pair, hence their mixture, by joint convexity). The pool windows are
disjoint from every run window and from each other (:mod:`secprune.audits.population`); the attacker's
shadow pool and the challenger's pool are disjoint halves.

Views of one trial:
* ``own``: the client's own layer-0 mask (no secure aggregation);
* ``sum``: the vote count over all ``m`` clients (what secure aggregation reveals);
* ``noisy_sum``: the sum with Skellam noise Sk(lam, lam) (what distributed DP inside the secure sum
  reveals; the clients' shares sum to exactly this law);
* ``final``: the server's final mask alone (what a secure top-k would reveal, and what every user of the
  pruned model sees);
* ``rr``: the own mask after randomized response with ``eps_bit`` (local DP).

Attacks (the attacker knows the public model and pool, not the other clients' data):
* ``lira`` -- likelihood ratio from shadow calibration sets (Carlini et al. 2022, Eq. 4, per-bit
  Bernoulli models): ``N_in`` shadow sets with the target, ``N_out`` without, p_in / p_out per bit
  (Laplace smoothing), log-likelihood ratio over the bits that vary in some shadow. RR: p' = p(1-q) +
  (1-p)q. Sums: per-count Gaussians with means p_in + (m-1) p_out and m p_out and matching Bernoulli
  variances (+ 2 lam). Final mask: per-bit Bernoulli fitted on shadow *final* masks, each built from a
  shadow own mask plus a simulated rest (a random (m-1)-subset of the out-shadows' masks).
* ``hamming`` -- the paper's signal (FedPrLLM App. C): distance to the population's majority mask minus
  distance to the target's own mask (L1 of counts for the sum); own and sum views.

Scores of different targets live on different scales, so pooled ROCs and bounds use *normalised*
scores: the trials are split in halves within every target; each target's scores are standardised by
the mean and standard deviation of its non-member scores in the selection half, where the threshold is
chosen too; the pooled ROC, AUC and epsilon bound are computed on the other half
(:func:`secprune.audits.epsilon.empirical_epsilon`). The per-target ROCs (all trials) are reported too.
Layer 0 only (exact and cheap, :mod:`secprune.audits.engine`); deeper
layers could only add signal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from secprune.audits.engine import LayerZeroMasks
from secprune.audits.epsilon import auc, auc_ci, empirical_epsilon, summarize
from secprune.dp import flip_probability, skellam_noise
from secprune.fedprllm.aggregate import ServerRule

VIEWS = ("own", "sum", "noisy_sum", "final", "rr")
HAMMING_VIEWS = ("own", "sum")


@dataclass
class MIABudget:
    targets: int = 8
    shadows_in: int = 12
    shadows_out: int = 48
    trials_in: int = 24  # member trials per target (one fresh mask each)
    trials_out: int = 24  # non-member trials per target (one fresh mask each)
    client_size: int = 2  # windows per client
    n_clients: int = 16  # for the sum views
    rr_eps: float = 2.0
    skellam_lam: float = 50.0
    sparsity: float = 0.5
    server_group: str = "layer"
    seed: int = 0


class FinalMasks:
    """The server's final mask of layer 0 in the engine's flat layout, by the run's own rule
    (:class:`secprune.fedprllm.aggregate.ServerRule`)."""

    def __init__(self, engine: LayerZeroMasks, rule: ServerRule) -> None:
        self.layout, self.rule = engine.layout, rule

    def one(self, name: str, counts: torch.Tensor) -> torch.Tensor:
        """Flat final mask of one matrix from its flat integer counts."""
        return self.rule(name, counts.view(self.layout.shapes[self.layout.names.index(name)])).reshape(-1)

    def __call__(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.one(n, counts[self.layout.slice(n)]) for n in self.layout.names])


def _count(rows: torch.Tensor, pick=None) -> torch.Tensor:
    """Column sums of bool rows (optionally only ``pick``) as int64; a row-by-row loop is ~10x faster than
    summing a bool matrix in torch."""
    idx = range(rows.shape[0]) if pick is None else [int(i) for i in pick]
    acc = torch.zeros(rows.shape[1], dtype=torch.int32)
    for i in idx:
        acc += rows[i]
    return acc.to(torch.int64)


def _draw(rng: np.random.Generator, population: np.ndarray, k: int) -> np.ndarray:
    return rng.choice(population, size=k, replace=False)


class _Scorer:
    """Per-target attack models built from shadow masks."""

    def __init__(self, *, p_in, p_out, pf_in, pf_out, active, active_f, solo, majority, budget: MIABudget) -> None:
        self.m = budget.n_clients
        self.q = flip_probability(budget.rr_eps)
        self.lam = budget.skellam_lam
        self.active, self.active_f = active, active_f  # bits that vary in some shadow (the others add a constant)
        pi, po = p_in[self.active], p_out[self.active]
        self.w1 = torch.log(pi) - torch.log(po)
        self.w0 = torch.log1p(-pi) - torch.log1p(-po)
        q = self.q
        ri, ro = pi * (1 - q) + (1 - pi) * q, po * (1 - q) + (1 - po) * q
        self.r1, self.r0 = torch.log(ri) - torch.log(ro), torch.log1p(-ri) - torch.log1p(-ro)
        fi, fo = pf_in[self.active_f], pf_out[self.active_f]
        self.f1, self.f0 = torch.log(fi) - torch.log(fo), torch.log1p(-fi) - torch.log1p(-fo)
        m = self.m
        self.mu_in, self.mu_out = pi + (m - 1) * po, m * po
        self.var_in = pi * (1 - pi) + (m - 1) * po * (1 - po)
        self.var_out = m * po * (1 - po)
        # the paper's signal on the bits where it can differ between members and non-members: bits that vary
        # in some shadow, or where the target's own mask differs from the majority (elsewhere both terms cancel
        # for the own mask and are near-constant for the sum)
        self.ham = torch.unique(torch.cat([active, torch.nonzero(solo != majority).view(-1)]))
        self.solo, self.majority = solo[self.ham].double(), majority[self.ham].double()
        self.solo_sum = self.solo + (m - 1) * p_out[self.ham]
        self.maj_sum = m * p_out[self.ham]

    def _gauss(self, y: torch.Tensor, extra_var: float) -> float:
        vi, vo = self.var_in + extra_var, self.var_out + extra_var
        ll_in = -0.5 * (y - self.mu_in).pow(2) / vi - 0.5 * torch.log(vi)
        ll_out = -0.5 * (y - self.mu_out).pow(2) / vo - 0.5 * torch.log(vo)
        return float((ll_in - ll_out).sum())

    def lira(self, view: str, obs: torch.Tensor) -> float:
        if view == "final":
            x = obs[self.active_f].double()
            return float((x * self.f1 + (1 - x) * self.f0).sum())
        x = obs[self.active].double()
        if view == "own":
            return float((x * self.w1 + (1 - x) * self.w0).sum())
        if view == "rr":
            return float((x * self.r1 + (1 - x) * self.r0).sum())
        return self._gauss(x, 0.0 if view == "sum" else 2.0 * self.lam)

    def hamming(self, view: str, obs: torch.Tensor) -> float:
        x = obs[self.ham].double()
        if view == "own":
            return float((x - self.majority).abs().sum() - (x - self.solo).abs().sum())
        return float((x - self.maj_sum).abs().sum() - (x - self.solo_sum).abs().sum())


def _varying(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Indices of the bits that are not constant over the rows of ``a`` and ``b`` together."""
    both = _count(a) + _count(b)
    return torch.nonzero((both > 0) & (both < a.shape[0] + b.shape[0])).view(-1)


def _make_views(own: torch.Tensor, rest: torch.Tensor, *, finals: FinalMasks, noise_bits: torch.Tensor,
                budget: MIABudget, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One trial's five views. Noise and flips are drawn only on ``noise_bits`` (every bit any scorer of a
    noisy view reads): the other bits' noise is independent of everything the attack computes."""
    s = rest + own
    noisy = s.clone()
    nb = len(noise_bits)
    noisy[noise_bits] += torch.from_numpy(skellam_noise((nb,), lam=budget.skellam_lam, rng=rng))
    rr = own.clone()
    flips = torch.from_numpy(rng.random(nb) < flip_probability(budget.rr_eps))
    rr[noise_bits] ^= flips
    return {"own": own, "sum": s, "noisy_sum": noisy, "final": finals(s), "rr": rr}


def run_membership(engine: LayerZeroMasks, *, targets: np.ndarray, owners: np.ndarray, rest: list[torch.Tensor],
                   attacker_pool: np.ndarray, challenger_pool: np.ndarray, budget: MIABudget, progress=None,
                   rule: ServerRule | None = None) -> dict:
    """Run both attacks in every view; returns per (attack, view) pooled-normalised metrics with epsilon
    bounds, per-target AUCs, and the raw scores.

    ``targets`` index ``engine.pool``; ``owners[i]`` is the run client holding ``targets[i]`` and ``rest[i]``
    the flat int64 sum of the other run clients' layer-0 masks (engine layout). The two pools are disjoint
    index arrays into ``engine.pool``.
    """
    rng = np.random.default_rng(budget.seed)
    k = budget.client_size
    if len(attacker_pool) < max(k, 2) or len(challenger_pool) < k:
        raise ValueError(f"pools of {len(attacker_pool)} / {len(challenger_pool)} windows are too small for "
                         f"clients of {k} windows")
    tick = progress or (lambda *_: None)
    finals = FinalMasks(engine, rule or ServerRule(sparsity=budget.sparsity, group=budget.server_group,
                                                   seed=budget.seed))
    m = budget.n_clients

    # ---- attacker: out-shadows, their simulated sums and finals
    outs = torch.stack([engine.flat(_draw(rng, attacker_pool, k)) for _ in range(budget.shadows_out)])
    tick("mia")
    n_o = budget.shadows_out

    def rest_sim() -> torch.Tensor:  # the attacker's stand-in for the m - 1 other clients
        pick = rng.choice(n_o, size=m - 1, replace=n_o < m - 1)
        return _count(outs, pick)

    out_sum = _count(outs)
    p_out = (out_sum.double() + 1) / (n_o + 2)
    majority = out_sum * 2 > n_o
    fin_out = torch.stack([finals(o + rest_sim()) for o in outs])
    pf_out = (_count(fin_out).double() + 1) / (n_o + 2)

    # ---- attacker: per-target in-shadows and scorers
    scorers = []
    for t in targets:
        t = int(t)
        ins = torch.stack([engine.flat(np.concatenate([[t], _draw(rng, attacker_pool, k - 1)]))
                           for _ in range(budget.shadows_in)])
        p_in = (_count(ins).double() + 1) / (budget.shadows_in + 2)
        fin_in = torch.stack([finals(x + rest_sim()) for x in ins])
        pf_in = (_count(fin_in).double() + 1) / (budget.shadows_in + 2)
        scorers.append(_Scorer(p_in=p_in, p_out=p_out, pf_in=pf_in, pf_out=pf_out,
                               active=_varying(ins, outs), active_f=_varying(fin_in, fin_out), solo=engine.flat([t]),
                               majority=majority, budget=budget))
        tick("mia")
    noise_bits = torch.unique(torch.cat([s.active for s in scorers]))

    # ---- challenger: independent trials, one fresh calibration set (mask, noise, final) each
    keys = [("lira", v) for v in VIEWS] + [("hamming", v) for v in HAMMING_VIEWS]
    raw = {key: {"in": [[] for _ in targets], "out": [[] for _ in targets]} for key in keys}
    for ti, t in enumerate(targets):
        t = int(t)
        pool_t = challenger_pool[challenger_pool != t]
        for member, n in (("in", budget.trials_in), ("out", budget.trials_out)):
            for _ in range(n):
                members = np.concatenate([[t], _draw(rng, pool_t, k - 1)]) if member == "in" else _draw(rng, pool_t, k)
                views = _make_views(engine.flat(members), rest[ti], finals=finals, noise_bits=noise_bits,
                                    budget=budget, rng=rng)
                for a, v in keys:
                    sc = scorers[ti].lira(v, views[v]) if a == "lira" else scorers[ti].hamming(v, views[v])
                    raw[(a, v)][member][ti].append(sc)
            tick("mia")

    results = {}
    for a, v in keys:
        ins, outs_ = raw[(a, v)]["in"], raw[(a, v)]["out"]
        gi = np.concatenate([[i] * len(x) for i, x in enumerate(ins)])
        go = np.concatenate([[i] * len(x) for i, x in enumerate(outs_)])
        ee = empirical_epsilon(np.concatenate(ins), np.concatenate(outs_), groups_in=gi, groups_out=go,
                               seed=budget.seed)
        half = ee.pop("bound_half")
        res = summarize(half["in"], half["out"])  # pooled, normalised, on the trials the bound uses
        res["empirical_epsilon"] = ee
        per_target = [auc_ci(scores_in=x, scores_out=y) for x, y in zip(ins, outs_, strict=True)]
        res["per_target_auc"] = [p["auc"] for p in per_target]
        res["per_target_auc_ci"] = [[p["lo"], p["hi"]] for p in per_target]
        res["pooled_raw_auc"] = auc(np.concatenate(ins), np.concatenate(outs_))
        res["scores"] = {"in": [list(map(float, x)) for x in ins], "out": [list(map(float, x)) for x in outs_]}
        results[f"{a}/{v}"] = res
    return {"budget": asdict(budget), "layer": 0, "matrices": engine.layout.names, "bits": engine.layout.size,
            "targets": [int(t) for t in targets], "target_clients": [int(c) for c in owners],
            "trials_note": ("one fresh mask (and noise, and final mask) per trial; the other clients keep their "
                            "real run masks; pooled metrics on the bound half, each target's scores standardised by "
                            "its non-member scores in the selection half"),
            "noise_bits": int(len(noise_bits)), "results": results}


def signal_strength(engine: LayerZeroMasks, *, targets: np.ndarray, population: np.ndarray, k: int,
                    draws: int, seed: int = 0) -> dict:
    """The paper's MIA number, both neighbouring relations: Hamming distance between the mask of
    (target + k-1 others) and (a) the same k-1 others alone (remove-one), (b) the same k-1 others plus one
    more window (replace-one)."""
    rng = np.random.default_rng(seed)
    rem, rep = [], []
    for t in targets:
        for _ in range(draws):
            rest = _draw(rng, population[population != t], k)
            with_t = engine.flat(np.concatenate([[int(t)], rest[: k - 1]]))
            rep.append(float((with_t != engine.flat(rest)).float().mean()))
            if k >= 2:
                rem.append(float((with_t != engine.flat(rest[: k - 1])).float().mean()))
    out = {"replace_one": rep, "replace_one_mean": float(np.mean(rep)) if rep else float("nan"),
           "remove_one": rem, "remove_one_mean": float(np.mean(rem)) if rem else float("nan"),
           "definition": ("mask(target + k-1 others) vs mask(the same k-1 others) [remove-one] and vs "
                          "mask(the same k-1 others + one more window) [replace-one], layer 0")}
    out["hamming_with_vs_without"] = rem or rep
    out["mean"] = out["remove_one_mean"] if rem else out["replace_one_mean"]
    return out
