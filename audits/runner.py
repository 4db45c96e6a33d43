"""`secprune audit`: every audit and attack on one pruning run, written to ``audit.json``.

The run folder (``secprune prune --save-client-masks``) gives the real client masks of every layer; the
calibration windows are recomputed and verified. From the same public corpus we take *population*
windows: non-overlapping chunks that share no 16-token run with any run window or with each other
(:mod:`secprune.audits.population`), split into the attacker's shadow pool and the challenger's pool.
What runs (budgets in :class:`AuditBudget`, all stated in the output):

* entropy (capacity, and what a mask can reveal: H(mask) <= H(data)), similarity, sensitivity;
* membership inference with independent trials in five views (own mask, vote sum, noisy sum, final mask,
  randomized response), per-target and normalised pooled ROCs, the Clopper-Pearson epsilon bound with
  its threshold chosen on a disjoint half (:mod:`secprune.attacks.membership`);
* one-run auditing (Steinke, Nasr & Jagielski 2023) as a second epsilon estimator
  (:mod:`secprune.attacks.one_run_game`);
* canary exposure (Carlini et al. 2019), exact at layer 0 (:mod:`secprune.attacks.canary`);
* token recovery: the paper's inversion, the structured attack and prior + mask evidence, each as lift
  over the best data-free baseline at equal K;
* the defence: perplexity of the final mask when the server sees RR or Skellam-noised counts, with the
  accounting the pipeline uses (``secprune prune --dp-noise``; the real-pipeline curve is
  ``experiments/dp_utility_curve.py``).

Private text never goes into ``audit.json``. Recovered and true tokens are written, owner-only, to
``private/reconstructions.json`` only when asked (``--keep-reconstructions``); the report shows them only
with ``--show-reconstructions``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from secprune import dp
from secprune.attacks import inversion as inv
from secprune.attacks.canary import CanaryBudget, exposure_audit
from secprune.attacks.membership import MIABudget, run_membership, signal_strength
from secprune.attacks.one_run_game import OneRunBudget, run_one_run
from secprune.audits import measures
from secprune.audits.engine import LayerZeroMasks, full_depth_masks, hamming
from secprune.fedprllm.aggregate import ServerRule
from secprune.masks import MaskSet

PAPER = {  # FedPrLLM App. C, LLaMA-7B
    "mask_entropy_bits": 1.0, "fp16_entropy_bits": 13.75, "similarity_hamming": 0.0496,
    "sensitivity_replace_hamming": 0.0496, "mia_signal_hamming": 0.0323, "inversion_token_recovery": 0.02,
    "claimed_epsilon": 0.05,
}
VIEWS = ("own", "sum", "noisy_sum", "final", "rr")
STRUCTURED_VIEWS = ("own", "sum", "final")  # the structured attack (slow NNLS) runs on the noise-free views


@dataclass
class AuditBudget:
    population: int = 96  # public windows disjoint from the run's (half shadow pool, half challenger pool)
    entropy_draws: int = 16
    sensitivity_pairs: int = 16  # layer-0 neighbour pairs per kind
    full_depth_pairs: int = 1  # every-layer neighbour pairs per kind
    mia: MIABudget = field(default_factory=MIABudget)
    one_run: OneRunBudget = field(default_factory=OneRunBudget)
    canary: CanaryBudget = field(default_factory=lambda: CanaryBudget(length=4, secrets=4, insertions=[1, 8]))
    inversion_clients: int = 2
    inversion_steps: int = 100
    inversion_positions: int = 64
    recovery_shadows: int = 12  # attacker's shadow clients for the prior + evidence attack
    rr_eps: list[float] = field(default_factory=lambda: [2.0])
    skellam_lam: list[float] = field(default_factory=lambda: [4.0, 1e4])
    eval_windows: int = 4
    delta: float = 1e-5
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditInputs:
    """Everything an audit needs, however it was obtained (a run folder, or a synthetic test case)."""

    model: object
    windows: torch.Tensor  # the run's calibration windows
    parts: list[np.ndarray]
    client_masks: MaskSet
    population: torch.Tensor  # public windows disjoint from the run's and from each other
    vocab_freq: np.ndarray  # public token frequencies without the run's windows (attacker's prior)
    eval_windows: torch.Tensor | None
    method: str = "wanda"
    sparsity: float = 0.5
    local_group: str = "row"
    server_group: str = "layer"
    seed: int = 0
    stable_ties: bool = False  # --numerics reference: ties to the lower index, locally and at the server
    batch_size: int = 8
    tokenizer: object = None  # for the canary (exposure) audit
    decode: object = None  # token ids -> text, only used for the private file
    run_info: dict = field(default_factory=dict)
    population_info: dict = field(default_factory=dict)

    def server_rule(self) -> ServerRule:
        """The run's own final-mask rule (the server's, not a copy of it)."""
        return ServerRule(sparsity=self.sparsity, group=self.server_group, seed=self.seed, stable=self.stable_ties)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        from secprune import log

        log.info(f"[audit] {msg}")


def _rest_layer0(masks: MaskSet, names: list[str], exclude: int) -> torch.Tensor:
    """Flat int64 sum of every client's layer-0 masks but ``exclude``'s, in ``names`` order."""
    parts = []
    for n in names:
        s = sum(masks.get(i, n).to(torch.int64) for i in range(masks.n) if i != exclude)
        parts.append(torch.as_tensor(s).reshape(-1))
    return torch.cat(parts)


def run_core(inp: AuditInputs, budget: AuditBudget, *, quiet: bool = False) -> tuple[dict, dict]:
    """Returns (audit results, private reconstructions)."""
    from secprune.fedprllm.driver import LocalSpec
    from secprune.methods import make_method

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng(budget.seed)
    n_run = inp.windows.shape[0]
    pool = torch.cat([inp.windows, inp.population])
    population = np.arange(n_run, pool.shape[0])
    shuffled = rng.permutation(population)
    attacker_pool, challenger_pool = np.sort(shuffled[: len(shuffled) // 2]), np.sort(shuffled[len(shuffled) // 2:])
    k = len(inp.parts[0])
    m = len(inp.parts)
    spec = LocalSpec(make_method(inp.method), inp.sparsity, inp.local_group, inp.seed, inp.batch_size)
    out: dict = {"paper": PAPER, "budget": budget.to_dict(), "run": inp.run_info,
                 "setting": {"method": inp.method, "sparsity": inp.sparsity, "local_group": inp.local_group,
                             "server_group": inp.server_group, "clients": m, "windows_per_client": k,
                             "seqlen": int(inp.windows.shape[1]), "population_windows": int(len(population)),
                             "attacker_pool": int(len(attacker_pool)), "challenger_pool": int(len(challenger_pool))},
                 "population": inp.population_info}

    t = time.perf_counter()
    engine = LayerZeroMasks(inp.model, pool, method=inp.method if inp.method in ("wanda", "magnitude") else "wanda",
                            sparsity=inp.sparsity, local_group=inp.local_group, seed=inp.seed,
                            batch_size=inp.batch_size, stable=inp.stable_ties)
    timings["layer0_stats_s"] = time.perf_counter() - t
    _log(f"layer-0 statistics of {pool.shape[0]} windows ({timings['layer0_stats_s']:.0f}s)", quiet)

    # ---------------- entropy
    t = time.perf_counter()
    names = inp.client_masks.names()
    q0 = "layers.0.self_attn.q_proj"
    draws = engine.flat_many([rng.choice(population, size=k, replace=False) for _ in range(budget.entropy_draws)])
    from secprune.model import decoder_layers
    qw = dict(decoder_layers(inp.model)[0].named_modules())["self_attn.q_proj"].weight
    stream_tokens = int(inp.population_info.get("stream_tokens", 0))
    out["entropy"] = {
        "mask_bit_entropy_q_proj": measures.mask_bit_entropy(inp.client_masks.get(0, q0)),
        "mask_bit_entropy_all": float(measures.binary_entropy(
            sum(float(inp.client_masks.get(0, n).float().sum()) for n in names)
            / sum(int(np.prod(inp.client_masks.shapes[n])) for n in names))),
        "fp16_q_proj": measures.fp16_entropy(qw),
        "across_draws_layer0": measures.information_across_draws(draws, engine),
        "data_entropy": measures.data_entropy_bound(windows_per_client=k, stream_tokens=stream_tokens,
                                                    seqlen=int(inp.windows.shape[1]), pool=len(population)),
    }
    timings["entropy_s"] = time.perf_counter() - t
    _log(f"entropy ({timings['entropy_s']:.0f}s)", quiet)

    # ---------------- similarity
    t = time.perf_counter()
    out["similarity"] = {
        "run_clients_all_layers": measures.pairwise_hamming_packed(inp.client_masks.packed, inp.client_masks.shapes,
                                                                   seed=budget.seed),
        "layer0_independent_draws": measures.pairwise_hamming_flat(draws),
        "note": "clients of an IID run hold disjoint, independently drawn windows",
    }
    timings["similarity_s"] = time.perf_counter() - t
    _log(f"similarity ({timings['similarity_s']:.0f}s)", quiet)

    # ---------------- sensitivity
    t = time.perf_counter()
    sens = {"layer0": measures.sensitivity_layer0(engine, population, k=k, pairs=budget.sensitivity_pairs,
                                                  seed=budget.seed + 1)}
    mag = LayerZeroMasks(inp.model, pool, method="magnitude", sparsity=inp.sparsity, local_group=inp.local_group,
                         seed=inp.seed, stable=inp.stable_ties)
    a, b = measures.neighbour_sets(np.random.default_rng(budget.seed), population, k, "replace")
    sens["magnitude_baseline_layer0"] = float((mag.flat(a) != mag.flat(b)).float().mean())
    full = {}
    frng = np.random.default_rng(budget.seed + 2)
    for kind in ("replace", "remove"):
        if kind == "remove" and k < 2:
            continue
        rows = []
        for _ in range(budget.full_depth_pairs):
            a, b = measures.neighbour_sets(frng, population, k, kind)
            ma, mb = full_depth_masks(inp.model, pool, [a, b], spec=spec)
            rows.append(hamming(ma, mb))
        if rows:
            full[kind] = {"total": [r["total"] for r in rows], "bits": [r["bits"] for r in rows],
                          "per_layer": {li: float(np.mean([r["per_layer"][li] for r in rows]))
                                        for li in rows[0]["per_layer"]},
                          "per_matrix": {n: float(np.mean([r["per_matrix"][n] for r in rows]))
                                         for n in rows[0]["per_matrix"]}}
    sens["all_layers"] = full
    out["sensitivity"] = sens
    timings["sensitivity_s"] = time.perf_counter() - t
    _log(f"sensitivity ({timings['sensitivity_s']:.0f}s)", quiet)

    # ---------------- membership inference (independent trials, five views)
    t = time.perf_counter()
    mb = MIABudget(**{**asdict(budget.mia), "client_size": k, "n_clients": m, "sparsity": inp.sparsity,
                      "server_group": inp.server_group, "seed": budget.seed})
    owners_all = np.empty(n_run, dtype=np.int64)
    for c, p in enumerate(inp.parts):
        owners_all[np.asarray(p)] = c
    targets = np.array([int(np.asarray(p)[0]) for p in inp.parts][: max(1, min(mb.targets, m))])
    owners = owners_all[targets]
    rest = [_rest_layer0(inp.client_masks, engine.layout.names, int(c)) for c in owners]
    out["membership"] = run_membership(engine, targets=targets, owners=owners, rest=rest,
                                       attacker_pool=attacker_pool, challenger_pool=challenger_pool, budget=mb,
                                       rule=inp.server_rule())
    out["membership"]["signal_strength"] = signal_strength(engine, targets=targets, population=population, k=k,
                                                           draws=2, seed=budget.seed)
    timings["membership_s"] = time.perf_counter() - t
    _log(f"membership inference ({timings['membership_s']:.0f}s)", quiet)

    # ---------------- one-run auditing
    t = time.perf_counter()
    ob = OneRunBudget(**{**asdict(budget.one_run), "sparsity": inp.sparsity, "server_group": inp.server_group,
                         "delta": budget.delta, "seed": budget.seed})
    out["one_run"] = run_one_run(engine, parts=[np.asarray(p) for p in inp.parts], canary_pool=population, budget=ob,
                                 rule=inp.server_rule())
    timings["one_run_s"] = time.perf_counter() - t
    _log(f"one-run audit ({timings['one_run_s']:.0f}s)", quiet)

    # ---------------- canary exposure
    t = time.perf_counter()
    out["exposure"] = _exposure(inp, budget, engine, population)
    timings["exposure_s"] = time.perf_counter() - t
    _log(f"canary exposure ({timings['exposure_s']:.0f}s)", quiet)

    # ---------------- token recovery
    t = time.perf_counter()
    recon_out, private = _inversion(inp, budget, engine, attacker_pool, k, m)
    out["inversion"] = recon_out
    timings["inversion_s"] = time.perf_counter() - t
    _log(f"token recovery ({timings['inversion_s']:.0f}s)", quiet)

    # ---------------- defence
    t = time.perf_counter()
    h_emp = max([max(v["bits"]) for v in full.values()] or [0])
    out["defence"] = _defence(inp, budget, h_emp=h_emp)
    timings["defence_s"] = time.perf_counter() - t
    _log(f"defence ({timings['defence_s']:.0f}s)", quiet)

    timings["total_s"] = time.perf_counter() - t_all
    out["timings"] = timings
    out["summary"] = _summary(out)
    return out, private


def _exposure(inp: AuditInputs, budget: AuditBudget, engine: LayerZeroMasks, population: np.ndarray) -> dict:
    if inp.tokenizer is None:
        return {"skipped": "no tokenizer"}
    if inp.method not in ("wanda", "magnitude") or inp.server_group != "layer":
        return {"skipped": f"exposure audit needs wanda/magnitude and --server-group layer (run: {inp.method}, "
                           f"{inp.server_group})"}
    feats = inv.token_features(inp.model)
    weights = inv.layer0_weights(inp.model)
    client = 0
    rest = {n: sum(inp.client_masks.get(i, f"layers.0.{n}").to(torch.int64) for i in range(inp.client_masks.n)
                   if i != client) for n in weights}
    if "self_attn.q_proj" in engine.stats:
        mean_sq = engine.stats["self_attn.q_proj"][torch.as_tensor(population)].mean(0)
    else:  # magnitude engine keeps no statistics: compute the public mean from the token features
        mean_sq = torch.stack([feats[inp.population[i]].double().pow(2).sum(0)
                               for i in range(inp.population.shape[0])]).mean(0)
    cb = CanaryBudget(**{**asdict(budget.canary), "seed": budget.seed})
    try:
        return exposure_audit(features=feats, weights=weights,
                              client_windows=inp.windows[torch.as_tensor(np.asarray(inp.parts[client]))],
                              rest_counts=rest, n_clients=inp.client_masks.n, mean_window_sq=mean_sq,
                              tokenizer=inp.tokenizer, budget=cb, method=inp.method, sparsity=inp.sparsity,
                              seed=inp.seed, server_group=inp.server_group) | {"client": client}
    except ValueError as exc:  # e.g. a tokenizer that merges digits
        return {"skipped": str(exc)}


def _inversion(inp: AuditInputs, budget: AuditBudget, engine: LayerZeroMasks, attacker_pool: np.ndarray, k: int,
               m: int) -> tuple[dict, dict]:
    feats = inv.token_features(inp.model)
    feats_sq = feats.pow(2)
    weights = inv.layer0_weights(inp.model)
    qkv = [f"layers.0.{n}" for n in weights]
    freq = np.zeros(feats.shape[0])  # the model's vocabulary (a tokenizer may use fewer ids)
    n_f = min(len(inp.vocab_freq), len(freq))
    freq[:n_f] = inp.vocab_freq[:n_f]
    cand_np = np.flatnonzero(freq > 0)
    cand = torch.from_numpy(cand_np)
    rare = inv.population_rare(freq)
    prior_rank = [int(t) for t in np.argsort(-freq, kind="stable")]
    counts = {n: sum(inp.client_masks.get(i, n).to(torch.int64) for i in range(m)) for n in qkv}
    union = set(inp.windows.reshape(-1).tolist())
    gen = torch.Generator().manual_seed(budget.seed)
    nrng = np.random.default_rng(budget.seed)
    rr_eps, lam = budget.mia.rr_eps, budget.mia.skellam_lam
    q = dp.flip_probability(rr_eps)
    seqlen = int(inp.windows.shape[1])
    log_prior = inv.presence_log_prior(freq=freq, n_tokens=k * seqlen)
    if "self_attn.q_proj" in engine.stats:
        prior_sq = engine.stats["self_attn.q_proj"][torch.as_tensor(attacker_pool)].mean(0) * k
    else:
        prior_sq = torch.stack([feats[inp.population[i - inp.windows.shape[0]]].double().pow(2).sum(0)
                                for i in attacker_pool]).mean(0) * k
    rule = inp.server_rule()

    def final_of(cnt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: rule(n, c) for n, c in cnt.items()}

    def make_views(own: dict[str, torch.Tensor], total: dict[str, torch.Tensor]) -> dict[str, dict]:
        noisy = {n: v + torch.from_numpy(dp.skellam_noise(tuple(v.shape), lam=lam, rng=nrng)) for n, v in total.items()}
        return {"own": inv.kept_from_view("own", own),
                "sum": inv.kept_from_view("sum", total, n_clients=m),
                "noisy_sum": inv.kept_from_view("noisy_sum", noisy, n_clients=m),
                "final": inv.kept_from_view("own", final_of(total)),
                "rr": inv.kept_from_view("rr", {n: dp.randomized_response(v, rr_eps, generator=gen)
                                                for n, v in own.items()}, q=q)}

    # attacker: shadow clients from its pool (it knows their tokens) to fit the evidence weight per view
    srng = np.random.default_rng(budget.seed + 5)
    n_sh = min(budget.recovery_shadows, max(len(attacker_pool) // k - 1, 0))
    shadow_sets = [srng.choice(attacker_pool, size=k, replace=False) for _ in range(n_sh + m - 1)]
    shadow_masks = [engine.masks(s) for s in shadow_sets]
    shadows: dict[str, list] = {v: [] for v in VIEWS}
    for i in range(n_sh):
        own = {n: shadow_masks[i][n] for n in qkv}
        others = [j for j in range(len(shadow_sets)) if j != i][: m - 1]
        total = {n: own[n].to(torch.int64) + sum(shadow_masks[j][n].to(torch.int64) for j in others) for n in qkv}
        true = set(pool_tokens(engine, shadow_sets[i]))
        for v, kept in make_views(own, total).items():
            shadows[v].append((inv.token_evidence(kept=kept, weights=weights, features_sq=feats_sq, prior_sq=prior_sq),
                               true))
    weight = {}
    for v in VIEWS:
        weight[v] = inv.fit_weight(shadows=shadows[v], log_prior=log_prior, candidates=cand_np) if shadows[v] else \
            (0.0, {})

    per_client, private = [], {"clients": []}
    for c in range(min(budget.inversion_clients, m)):
        true = set(inp.windows[torch.as_tensor(inp.parts[c])].reshape(-1).tolist())
        own = {n: inp.client_masks.get(c, n) for n in qkv}
        views = make_views(own, counts)
        K = len(true)
        base = inv.data_free_baselines(true_tokens=true, prior_rank=prior_rank, candidates=cand_np,
                                       freq=freq, k=K)
        row = {"client": c, "distinct_tokens": K, "baselines": base,
               "prior_baseline": inv.recovery(prior_rank, true, rare=rare), "structured": {}, "combined": {}}
        priv = {"client": c, "true_tokens": sorted(true), "structured": {}, "combined": {}}
        for v, kept in views.items():
            if v not in STRUCTURED_VIEWS:
                ev = inv.token_evidence(kept=kept, weights=weights, features_sq=feats_sq, prior_sq=prior_sq)
                _combined(row, priv, v, ev, weight, log_prior, cand_np, true, rare, base, K)
                continue
            res = inv.structured_attack(kept, weights, feats, candidates=cand)
            ranked = inv.ranked_tokens(res["histogram"])
            if len(ranked) < K:  # pad with the prior so that top-K is always K tokens
                seen = set(ranked)
                ranked += [t for t in prior_rank if t not in seen][: K - len(ranked)]
            r = inv.recovery(ranked, true, rare=rare)
            r["lift"] = r["precision"] / base["best"] if base["best"] > 0 else float("nan")
            row["structured"][v] = r
            if v == "sum":
                row["structured_sum_vs_union"] = inv.recovery(ranked, union, rare=rare)
            priv["structured"][v] = ranked[: min(K, 50)]
            ev = inv.token_evidence(kept=kept, weights=weights, features_sq=feats_sq, prior_sq=prior_sq)
            _combined(row, priv, v, ev, weight, log_prior, cand_np, true, rare, base, K)
        paper = inv.embedding_inversion({n: inp.client_masks.get(c, n) for n in qkv}, inp.model,
                                        positions=budget.inversion_positions, steps=budget.inversion_steps,
                                        sparsity=inp.sparsity, seed=budget.seed + c, candidates=cand)
        ptoks = paper["tokens"]
        hits = sum(1 for tok in ptoks if tok in true)
        kd = len(set(ptoks))
        pbase = inv.data_free_baselines(true_tokens=true, prior_rank=prior_rank, candidates=cand_np,
                                        freq=freq, k=kd)
        dprec = len(set(ptoks) & true) / max(kd, 1)
        row["paper_embedding_inversion"] = {
            "positions": len(ptoks), "token_hits": hits, "token_precision": hits / max(len(ptoks), 1),
            "distinct_tokens": kd, "distinct_precision": dprec, "baselines": pbase,
            "lift": dprec / pbase["best"] if pbase["best"] > 0 else float("nan"),
            "per_position_chance": pbase["chance_precision"],
            "per_position_prior_sampling": pbase["prior_sampling_per_position"],
            "distinct_recall": len(set(ptoks) & true) / max(len(true), 1),
            "loss_first": paper["loss_first"], "loss_last": paper["loss_last"]}
        priv["paper_tokens"] = ptoks
        if inp.decode is not None:
            priv["text"] = {"true_first_window": inp.decode(inp.windows[int(inp.parts[c][0])][:64].tolist()),
                            "paper_reconstruction": inp.decode(ptoks),
                            "structured_top_own": [inp.decode([t]) for t in priv["structured"]["own"][:30]],
                            "structured_top_sum": [inp.decode([t]) for t in priv["structured"]["sum"][:30]],
                            "combined_top_own": [inp.decode([t]) for t in priv["combined"]["own"][:30]]}
        per_client.append(row)
        private["clients"].append(priv)

    def avg(path):
        vals = []
        for r in per_client:
            x = r
            for p in path:
                x = x[p]
            vals.append(x)
        vals = [x for x in vals if not (isinstance(x, float) and math.isnan(x))]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {"prior_precision": avg(["baselines", "prior_precision"]),
               "chance_precision": avg(["baselines", "chance_precision"]),
               "best_data_free_precision": avg(["baselines", "best"]),
               "paper_token_precision": avg(["paper_embedding_inversion", "token_precision"]),
               "paper_per_position_chance": avg(["paper_embedding_inversion", "per_position_chance"]),
               "paper_distinct_precision": avg(["paper_embedding_inversion", "distinct_precision"]),
               "paper_distinct_baseline": avg(["paper_embedding_inversion", "baselines", "best"]),
               "paper_lift": avg(["paper_embedding_inversion", "lift"]),
               "paper_distinct_recall": avg(["paper_embedding_inversion", "distinct_recall"])}
    for v in VIEWS:
        for att in ("structured", "combined"):
            if att == "structured" and v not in STRUCTURED_VIEWS:
                continue
            summary[f"{att}_{v}_precision"] = avg([att, v, "precision"])
            summary[f"{att}_{v}_lift"] = avg([att, v, "lift"])
            summary[f"{att}_{v}_rare_recall"] = avg([att, v, "rare_recall"])
    summary["prior_rare_recall"] = avg(["prior_baseline", "rare_recall"])
    best = max([("structured", v) for v in STRUCTURED_VIEWS] + [("combined", v) for v in VIEWS],
               key=lambda x: summary[f"{x[0]}_{x[1]}_lift"])
    summary["best_attack"] = {"attack": best[0], "view": best[1], "lift": summary[f"{best[0]}_{best[1]}_lift"]}
    return {"clients": per_client, "summary": summary, "views_noise": {"rr_eps": rr_eps, "skellam_lam": lam},
            "evidence_weight": {v: {"weight": weight[v][0], "shadow_precision": weight[v][1]} for v in VIEWS},
            "shadow_clients": n_sh, "candidates": int(len(cand)),
            "rare_definition": "outside the 1000 most frequent public tokens",
            "layer": 0, "matrices": qkv}, private


def _combined(row, priv, v, ev, weight, log_prior, cand_np, true, rare, base, K) -> None:
    w = weight[v][0]
    comb = inv.combined_ranking(log_prior=log_prior, evidence=ev, weight=w, candidates=cand_np)
    rc = inv.recovery(comb, true, rare=rare)
    rc["lift"] = rc["precision"] / base["best"] if base["best"] > 0 else float("nan")
    rc["weight"] = w
    row["combined"][v] = rc
    priv["combined"][v] = comb[: min(K, 50)]


def pool_tokens(engine: LayerZeroMasks, members) -> list[int]:
    return engine.pool[torch.as_tensor(np.asarray(members, dtype=np.int64))].reshape(-1).tolist()


def _defence(inp: AuditInputs, budget: AuditBudget, *, h_emp: int) -> dict:
    """Perplexity of the final mask the server computes from noisy counts, simulated on the run's client
    masks (one-shot client masks do not depend on the server, so this is what a run with the same noise
    would produce), beside the accounting the pipeline uses."""
    from secprune.evaluate import perplexity
    from secprune.surgery import pruned
    names = inp.client_masks.names()
    m = inp.client_masks.n
    counts = {n: sum(inp.client_masks.get(i, n).to(torch.int64) for i in range(m)) for n in names}
    n_bits = int(sum(c.numel() for c in counts.values()))
    gen = torch.Generator().manual_seed(budget.seed)
    rng = np.random.default_rng(budget.seed)
    rule = inp.server_rule()

    def ppl(cnts) -> float | None:
        if inp.eval_windows is None or inp.eval_windows.shape[0] == 0:
            return None
        final = {n: rule(n, c) for n, c in cnts.items()}
        with pruned(inp.model, masks=final):
            return perplexity(inp.model, inp.eval_windows, progress=False)

    rows = [{"mechanism": "none", "param": None, "ppl": ppl(counts), "eps_worst": math.inf,
             "eps_empirical_sensitivity": math.inf}]
    for e in budget.rr_eps:
        noisy = {n: dp.rr_noisy_counts(c, m, e, generator=gen) for n, c in counts.items()}
        worst = dp.rr_epsilon(e, h=n_bits, delta=budget.delta)
        emp = dp.rr_epsilon(e, h=max(h_emp, 1), delta=budget.delta)
        rows.append({"mechanism": "rr", "param": e, "flip_probability": dp.flip_probability(e), "ppl": ppl(noisy),
                     "eps_worst": worst["eps_rdp"], "eps_worst_pure": worst["eps_pure"],
                     "eps_empirical_sensitivity": emp["eps_rdp"]})
    for lam in budget.skellam_lam:
        noisy = {n: c + torch.from_numpy(dp.skellam_noise(tuple(c.shape), lam=lam, rng=rng)) for n, c in counts.items()}
        acc = dp.distributed_skellam_accounting(lam=lam, n_clients=m, dropouts=0, colluders=0, entries=n_bits,
                                                delta=budget.delta, secure=True)
        emp = dp.skellam_epsilon(lam, h=max(h_emp, 1), delta=budget.delta)
        gauss = dp.gaussian_epsilon(math.sqrt(2 * lam), h=n_bits, delta=budget.delta)
        rows.append({"mechanism": "skellam", "param": lam, "noise_sd": math.sqrt(2 * lam), "ppl": ppl(noisy),
                     "eps_worst": acc["epsilon"], "delta_total": acc["delta_total"],
                     "eps_worst_gaussian_reference": gauss["eps"], "eps_empirical_sensitivity": emp["eps"]})
    return {"rows": rows, "n_bits": n_bits, "h_worst": n_bits, "h_empirical": h_emp, "delta": budget.delta,
            "eval_windows": 0 if inp.eval_windows is None else int(inp.eval_windows.shape[0]),
            "sensitivity_note": ("eps_worst uses h = every mask bit (a window or a client can change them all): "
                                 "the only guarantee. eps_empirical_sensitivity uses the largest Hamming change "
                                 "seen in the sensitivity audit: a heuristic, NOT a DP guarantee."),
            "rr_note": "noisy counts sampled exactly as Binomial(c, 1-q) + Binomial(m-c, q)",
            "skellam_note": ("total noise Sk(lam, lam) per count: the law of the sum of every client's share in "
                             "`secprune prune --dp-noise skellam --dp-lambda lam` with every client present "
                             "(shares clipped with probability < e^-200); accounting by "
                             "secprune.dp.distributed_skellam_accounting, as the pipeline reports it"),
            "strategy_note": "one-shot: client masks do not depend on the server, so noise is added post hoc"}


def _summary(out: dict) -> dict:
    mem = out["membership"]["results"]
    sens = out["sensitivity"]
    one = out["one_run"]["results"]
    s = {
        "mask_entropy_bits": out["entropy"]["mask_bit_entropy_q_proj"],
        "fp16_entropy_bits": out["entropy"]["fp16_q_proj"]["bits"],
        "similarity_all_layers": out["similarity"]["run_clients_all_layers"]["mean"],
        "sensitivity_replace_layer0": sens["layer0"].get("replace", {}).get("mean"),
        "sensitivity_remove_layer0": sens["layer0"].get("remove", {}).get("mean"),
        "sensitivity_replace_all_layers": float(np.mean(sens["all_layers"]["replace"]["total"]))
        if "replace" in sens["all_layers"] else None,
        "sensitivity_remove_all_layers": float(np.mean(sens["all_layers"]["remove"]["total"]))
        if "remove" in sens["all_layers"] else None,
        "mia_signal_remove_one": out["membership"]["signal_strength"]["remove_one_mean"],
        "mia_signal_replace_one": out["membership"]["signal_strength"]["replace_one_mean"],
        "mia": {key: {"auc": r["auc"], "auc_ci": r["auc_ci"], "per_target_auc_min": float(np.min(r["per_target_auc"])),
                      "per_target_auc_max": float(np.max(r["per_target_auc"])), "pooled_raw_auc": r["pooled_raw_auc"],
                      "tpr_at_1pct_fpr": r["tpr_at_1pct_fpr"], "tpr_1pct_resolved": r["low_fpr_resolvable"]["1pct"],
                      "eps_lower_bound": r["empirical_epsilon"]["eps_lower_bound"],
                      "eps_max_attainable": r["empirical_epsilon"]["max_attainable"]} for key, r in mem.items()},
        "one_run": {v: {"eps_lower_bound": r["eps_lower_bound"], "max_attainable": r["max_attainable"],
                        "auc": r["auc"], "auc_ci": r["auc_ci"]} for v, r in one.items()},
        "exposure": out["exposure"].get("summary"),
        "inversion": out["inversion"]["summary"],
        "information_bits_layer0_plugin": out["entropy"]["across_draws_layer0"]["sum_bit_entropy_bits"],
        "data_entropy_bound_bits": out["entropy"]["data_entropy"]["bits"],
    }
    s["max_eps_lower_bound"] = max([v["eps_lower_bound"] for v in s["mia"].values()]
                                   + [v["eps_lower_bound"] for v in s["one_run"].values()])
    return s


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def save_audit(out_dir: Path, result: dict, private: dict | None) -> None:
    """``audit.json`` (numbers only); the recovered and true tokens only when ``private`` is given, owner-only."""
    from secprune import outdir

    if private is not None:
        folder = outdir.private_dir(out_dir / "private")
        with outdir.owner_only():
            outdir.atomic_write(folder / "reconstructions.json", json.dumps(private, indent=1, default=_json_default))
    outdir.atomic_write(out_dir / "audit.json", json.dumps(result, indent=1, default=_json_default))


# ---------------------------------------------------------------- loading a run folder
def inputs_from_run(run_dir: Path, budget: AuditBudget, *, eval_windows: int | None = None,
                    client_data: list[str] | None = None) -> AuditInputs:
    """Everything the audit needs from a `secprune prune --save-client-masks` folder.

    The run keeps no calibration token ids unless it was asked to (``--keep-calibration``). Otherwise the
    windows are recomputed from the data the run was given (``client_data`` overrides the paths of its
    ``--client-data`` files), exactly as the run drew them, and checked against the run's own layer-0
    client masks, so an audit of changed data is refused instead of silently measuring something else.
    """
    from secprune import calibration
    from secprune import summary as run_summary
    from secprune.config import PruneConfig
    from secprune.errors import UsageError
    from secprune.model import load_model, param_names

    run_dir = Path(run_dir)
    summary = run_summary.load(run_dir)
    cfg = PruneConfig(**summary["config"])
    if summary["algorithm"] != "fedprllm" or cfg.strategy != "one-shot":
        raise UsageError("--run: audits support one-shot FedPrLLM runs (iterative and FedSpaLLM client messages "
                         "depend on the server)")
    if cfg.method not in ("wanda", "magnitude"):
        raise UsageError(f"--run: audits support wanda and magnitude runs, got {cfg.method}")
    mask_path = run_dir / "private" / "client_masks.safetensors"
    if not mask_path.is_file():
        raise UsageError(f"--run: {run_dir} kept no client masks; rerun `secprune prune` with --save-client-masks")
    from secprune.run_common import redacted_paths

    recorded = redacted_paths(len(cfg.client_data))
    kept = run_dir / "private" / "calibration.pt"  # --keep-calibration: the windows themselves, owner-only
    if cfg.client_data and cfg.client_data == recorded and not client_data and not kept.is_file():
        raise UsageError(f"--client-data: the run calibrated on {len(cfg.client_data)} clients' own files and keeps "
                         "no paths of them; pass the same files, in the same order")
    if client_data:
        if len(client_data) != len(cfg.client_data):
            raise UsageError(f"--client-data: the run had {len(cfg.client_data)} clients' files, got "
                             f"{len(client_data)} paths")
        cfg.client_data = list(client_data)
    model, tok = load_model(cfg.model, device="cpu")
    masks = MaskSet.load(mask_path, names={v: k for k, v in param_names(model).items()})
    if kept.is_file():
        cal = torch.load(kept, weights_only=False)
        windows, parts = cal["windows"], [np.asarray(p) for p in cal["parts"]]
    else:
        calib = calibration.build(cfg, tok)
        windows, parts = calib.windows, calib.parts
        _check_recomputed(model, windows, parts, masks, cfg)
    names = [s.strip() for s in cfg.calib.split(",") if s.strip()] if not cfg.client_data else ["wiki-lead"]
    pop, freq, pinfo = public_population(tokenizer=tok, sources=names, count=budget.population, seqlen=cfg.seqlen,
                                         exclude=windows, seed=10_000 + budget.seed)
    ev = None
    n_eval = budget.eval_windows if eval_windows is None else eval_windows
    ppl_sets = [e for e in cfg.eval if e != "zero-shot"]  # the audits' utility numbers are perplexities
    if n_eval > 0 and ppl_sets:
        ev = calibration.eval_set(ppl_sets[0], tok, seqlen=cfg.eval_seqlen, max_windows=n_eval)
    return AuditInputs(model=model, windows=windows, parts=parts,
                       client_masks=masks, population=pop, vocab_freq=freq, eval_windows=ev,
                       method=cfg.method, sparsity=cfg.sparsity, local_group=cfg.local_group,
                       server_group=cfg.server_group, seed=cfg.seed, stable_ties=cfg.numerics == "reference",
                       batch_size=cfg.batch_size, tokenizer=tok,
                       decode=lambda ids: tok.decode(ids), population_info=pinfo,
                       run_info={"run_dir": str(run_dir), "model": cfg.model, "calib": cfg.calib,
                                 "clients": len(parts), "nsamples": cfg.nsamples, "seqlen": cfg.seqlen,
                                 "eval_set": ppl_sets[0] if ppl_sets else None,
                                 "calibration": "kept by the run" if kept.is_file() else "recomputed and verified",
                                 "run_perplexity": summary.get("results", {}).get("federated")})


def public_population(*, tokenizer, sources: list[str], count: int, seqlen: int, exclude: torch.Tensor,
                      seed: int) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Public windows disjoint from ``exclude`` (the run's windows) and from each other, split over the
    sources, and the public token frequencies without the run's windows (:mod:`secprune.audits.population`)."""
    from secprune import calibration
    from secprune.audits import population as P
    from secprune.data import window_bos
    from secprune.errors import UsageError

    rng = np.random.default_rng(seed)
    vocab = len(tokenizer)
    bos = window_bos(tokenizer)
    pops, freq, info = [], np.zeros(vocab, dtype=np.float64), {"sources": {}, "stream_tokens": 0}
    ex = exclude.numpy()
    for i, name in enumerate(sources):
        ids = calibration._source_ids(name, tokenizer).numpy()
        n = len(np.array_split(np.arange(count), len(sources))[i])
        if n:
            try:
                w, winfo = P.disjoint_windows(stream=ids, seqlen=seqlen, count=n, exclude=ex, rng=rng)
            except ValueError as exc:
                raise UsageError(f"--population {count}: {name}: {exc}") from None
            w = torch.from_numpy(w)
            if bos is not None:  # Gemma: windows start with <bos>, as the run's do (data.window_bos)
                w = torch.cat([torch.full((w.shape[0], 1), bos, dtype=w.dtype), w[:, :-1]], dim=1)
            pops.append(w)
            info["sources"][name] = {k: v for k, v in winfo.items() if k != "starts"} | {"windows": n}
        f, removed = P.public_frequencies(stream=ids, exclude=ex, vocab=vocab)
        freq += f
        info["sources"].setdefault(name, {})["prior_positions_removed"] = removed
        info["stream_tokens"] += int(len(ids))
    pop = torch.cat(pops) if pops else torch.zeros(0, seqlen, dtype=torch.long)
    info["rule"] = ("non-overlapping chunks sharing no 16-token run with any run window or with each other; "
                    "frequency prior without every position covered by a run window's 16-grams")
    return pop, freq, info


def _check_recomputed(model, windows: torch.Tensor, parts: list[np.ndarray], masks: MaskSet, cfg) -> None:
    """Layer-0 masks of client 0 from the recomputed windows must be the run's (a different text gives
    several percent of different bits; the same text gives none)."""
    from secprune.errors import UsageError

    engine = LayerZeroMasks(model, windows[torch.as_tensor(parts[0])], method=cfg.method, sparsity=cfg.sparsity,
                            local_group=cfg.local_group, seed=cfg.seed, batch_size=cfg.batch_size,
                            stable=cfg.numerics == "reference")
    mine = engine.flat(np.arange(len(parts[0])))
    theirs = torch.cat([masks.get(0, n).reshape(-1) for n in engine.layout.names])
    differ = float((mine != theirs).float().mean())
    if differ > 1e-4:
        raise UsageError(f"--run: the calibration recomputed from the run's data does not reproduce its client "
                         f"masks ({100 * differ:.2f}% of layer-0 bits differ): the data changed since the run; "
                         "pass the original files with --client-data, or rerun prune with --keep-calibration")
