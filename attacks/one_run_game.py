"""One-run auditing of FedPrLLM (Steinke, Nasr & Jagielski 2023) at layer 0: one run, many canaries.

The audited run keeps every client's real calibration windows. ``canaries`` public windows (disjoint from
every run window) are each assigned to a random client and included independently with probability
1/2; the clients' layer-0 masks are computed exactly once (:class:`secprune.audits.engine.LayerZeroMasks`)
and give the five views of :mod:`secprune.attacks.membership` (own masks of every client, vote sum, noisy
sum, final mask, randomized response). The noisy sum goes through :class:`secprune.dp_sum.NoisySum`, the
pipeline's own code: every client draws its Skellam share and the sum only sees the noisy submissions.

The auditor is the *informed* adversary of DP (it knows every client's own windows, but not which
canaries were included). For canary ``c`` of client ``j`` it computes the exact mask direction of
including ``c``: ``d_c = mask(S_j + s_c / 2) - mask(S_j - s_c / 2)`` (entries in {-1, 0, 1}) at the
expected statistic ``S_j`` = client j's windows + half of each of its canaries, and scores ``c`` by
the agreement of the observed view with that direction on its support::

    score_c = sum_{e: d_c,e != 0} d_c,e * (y_e - ybar_e),

``y`` the observed pruned fraction of the view (own: client j's mask; sums: counts / m; final: the final
mask) and ``ybar`` the same view at the expected statistics. Guesses and the epsilon lower bound come
from :mod:`secprune.audits.one_run` (Bonferroni over its grid of guess counts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from secprune.attacks.membership import FinalMasks, _count
from secprune.audits import one_run as O
from secprune.audits.engine import LayerZeroMasks
from secprune.audits.epsilon import auc_ci
from secprune.dp import flip_probability
from secprune.dp_sum import NoisySum
from secprune.fedprllm.aggregate import ServerRule

VIEWS = ("own", "sum", "noisy_sum", "final", "rr")


@dataclass
class OneRunBudget:
    canaries: int = 96
    skellam_lam: float = 50.0
    rr_eps: float = 2.0
    delta: float = 1e-5
    significance: float = 0.05
    sparsity: float = 0.5
    server_group: str = "layer"
    seed: int = 0


def _flat_mask(engine: LayerZeroMasks, sq: dict[str, torch.Tensor]) -> torch.Tensor:
    m = engine.mask_from_norms(sq)
    return torch.cat([m[n].reshape(-1) for n in engine.layout.names])


def run_one_run(engine: LayerZeroMasks, *, parts: list[np.ndarray], canary_pool: np.ndarray,
                budget: OneRunBudget, rule: ServerRule | None = None) -> dict:
    """One audited run with canaries; ``parts`` are the run clients' window indices into ``engine.pool``;
    ``rule`` is the run's server rule (default: the budget's sparsity and group, seeded ties)."""
    rng = np.random.default_rng(budget.seed)
    m = len(parts)
    n_can = min(budget.canaries, len(canary_pool))
    canaries = rng.choice(canary_pool, size=n_can, replace=False)
    owner = rng.permutation(np.arange(n_can) % m)
    included = rng.random(n_can) < 0.5
    finals = FinalMasks(engine, rule or ServerRule(sparsity=budget.sparsity, group=budget.server_group,
                                                   seed=budget.seed))

    def with_stats(j: int, extra: list[tuple[int, float]]) -> dict[str, torch.Tensor]:
        sq = engine.sq_norms(parts[j]) if engine.method == "wanda" else None
        if sq is not None:
            for c, w in extra:
                sq = {n: v + w * engine.stats[n][c] for n, v in sq.items()}
        return sq

    # the run: every client's real windows plus its included canaries
    own = torch.stack([engine.flat(np.concatenate([parts[j], canaries[(owner == j) & included]])) for j in range(m)])
    counts = _count(own)
    # the noisy view through the pipeline's own code path: every client adds its share inside a secure sum
    noisy_sum = NoisySum.make("none", n_clients=m, lam=budget.skellam_lam, noise_seed=budget.seed)
    noisy = torch.from_numpy(noisy_sum.sum("layer0", [own[j].numpy().astype(np.uint8) for j in range(m)]))
    rr = own ^ torch.from_numpy(rng.random(tuple(own.shape), dtype=np.float32) < flip_probability(budget.rr_eps))
    observed = {"sum": counts.double() / m, "noisy_sum": noisy.double() / m,
                "final": finals(counts).double()}

    # the auditor: expected statistics and each canary's exact mask direction
    expected, directions = [], [None] * n_can
    for j in range(m):
        mine = np.flatnonzero(owner == j)
        base = with_stats(j, [(int(canaries[i]), 0.5) for i in mine])
        expected.append(_flat_mask(engine, base) if base is not None else engine.flat(parts[j]))
        for i in mine:
            c = int(canaries[i])
            if base is None:  # data-free method: the mask cannot depend on any canary
                directions[i] = torch.zeros(engine.layout.size, dtype=torch.int8)
                continue
            plus = _flat_mask(engine, {n: v + 0.5 * engine.stats[n][c] for n, v in base.items()})
            minus = _flat_mask(engine, {n: v - 0.5 * engine.stats[n][c] for n, v in base.items()})
            directions[i] = plus.to(torch.int8) - minus.to(torch.int8)
    expected = torch.stack(expected)
    ybar = {"sum": expected.double().mean(0), "noisy_sum": expected.double().mean(0),
            "final": finals(_count(expected)).double()}
    q = flip_probability(budget.rr_eps)
    results = {}
    for v in VIEWS:
        scores = np.zeros(n_can)
        for i in range(n_can):
            d = directions[i]
            nz = torch.nonzero(d).view(-1)
            if len(nz) == 0:
                continue
            j = int(owner[i])
            if v == "own":
                y = own[j][nz].double() - expected[j][nz].double()
            elif v == "rr":  # E[rr bit] = q + (1 - 2q) bit
                y = rr[j][nz].double() - (q + (1 - 2 * q) * expected[j][nz].double())
            else:
                y = observed[v][nz] - ybar[v][nz]
            scores[i] = float((d[nz].double() * y).sum())
        res = O.audit(scores=scores, included=included, delta=budget.delta, significance=budget.significance)
        ci = auc_ci(scores_in=scores[included], scores_out=scores[~included])
        res.update({"auc": ci["auc"], "auc_ci": [ci["lo"], ci["hi"]], "scores": scores.tolist()})
        results[v] = res
    return {"budget": asdict(budget), "canaries": int(n_can), "included": included.astype(int).tolist(),
            "owners": owner.tolist(), "clients": m, "layer": 0,
            "support_mean": float(np.mean([int((d != 0).sum()) for d in directions])),
            "adversary": "informed (knows every client's own windows, not which canaries were included)",
            "results": results}
