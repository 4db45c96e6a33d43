"""`secprune audit`: every audit and attack on one pruning run, written to ``audit.json``.

The run folder (``secprune prune --save-client-masks``) gives the real client masks of every layer and
the calibration token ids. From the same public corpus we draw extra *population* windows: the shadow
data an attacker can get. What runs (budgets in :class:`AuditBudget`, all stated in the output):

* entropy, similarity (all layers from the run's client masks; layer 0 from fresh draws), sensitivity
  (layer 0 for many neighbour pairs; every layer for a few pairs);
* membership inference (Hamming and LiRA, four views, layer 0) with empirical epsilon;
* token recovery (the paper's embedding inversion and the structured Wanda attack) from real client
  masks in four views;
* the defence: perplexity of the final mask when the server sees RR or Skellam-noised counts, next to
  the epsilon the accountant gives (worst-case sensitivity) and a heuristic one (empirical sensitivity).

Private text never goes into ``audit.json``. Recovered and true tokens are written, owner-only, to
``private/reconstructions.json`` only when asked (``--keep-reconstructions``); the report shows them only
with ``--show-reconstructions``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from secprune import dp
from secprune.attacks import inversion as inv
from secprune.attacks.membership import MIABudget, run_membership, signal_strength
from secprune.audits import measures
from secprune.audits.engine import LayerZeroMasks, full_depth_masks, hamming
from secprune.masks import MaskSet

PAPER = {  # FedPrLLM App. C, LLaMA-7B
    "mask_entropy_bits": 1.0, "fp16_entropy_bits": 13.75, "similarity_hamming": 0.0496,
    "sensitivity_replace_hamming": 0.0496, "mia_signal_hamming": 0.0323, "inversion_token_recovery": 0.02,
    "claimed_epsilon": 0.05,
}


@dataclass
class AuditBudget:
    population: int = 32  # extra windows drawn from the public corpus (shadow data)
    entropy_draws: int = 16
    sensitivity_pairs: int = 16  # layer-0 neighbour pairs per kind
    full_depth_pairs: int = 1  # every-layer neighbour pairs per kind
    mia: MIABudget = field(default_factory=MIABudget)
    inversion_clients: int = 2
    inversion_steps: int = 100
    inversion_positions: int = 64
    rr_eps: list[float] = field(default_factory=lambda: [0.5, 2.0, 8.0])
    skellam_lam: list[float] = field(default_factory=lambda: [2.0, 32.0, 512.0])
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
    population: torch.Tensor  # extra public windows
    vocab_freq: np.ndarray  # public token frequencies (attacker's prior)
    eval_windows: torch.Tensor | None
    method: str = "wanda"
    sparsity: float = 0.5
    local_group: str = "row"
    server_group: str = "layer"
    seed: int = 0
    batch_size: int = 8
    decode: object = None  # token ids -> text, only used for the private file
    run_info: dict = field(default_factory=dict)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        from secprune import log

        log.info(f"[audit] {msg}")


def run_core(inp: AuditInputs, budget: AuditBudget, *, quiet: bool = False) -> tuple[dict, dict]:
    """Returns (audit results, private reconstructions)."""
    from secprune.federated import LocalSpec
    from secprune.methods import make_method

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng(budget.seed)
    n_run = inp.windows.shape[0]
    pool = torch.cat([inp.windows, inp.population])
    population = np.arange(n_run, pool.shape[0])
    k = len(inp.parts[0])
    m = len(inp.parts)
    spec = LocalSpec(make_method(inp.method), inp.sparsity, inp.local_group, inp.seed, inp.batch_size)
    out: dict = {"paper": PAPER, "budget": budget.to_dict(), "run": inp.run_info,
                 "setting": {"method": inp.method, "sparsity": inp.sparsity, "local_group": inp.local_group,
                             "clients": m, "windows_per_client": k, "seqlen": int(inp.windows.shape[1]),
                             "population_windows": int(len(population))}}

    t = time.perf_counter()
    engine = LayerZeroMasks(inp.model, pool, method=inp.method if inp.method in ("wanda", "magnitude") else "wanda",
                            sparsity=inp.sparsity, local_group=inp.local_group, seed=inp.seed,
                            batch_size=inp.batch_size)
    timings["layer0_stats_s"] = time.perf_counter() - t
    _log(f"layer-0 statistics of {pool.shape[0]} windows ({timings['layer0_stats_s']:.0f}s)", quiet)

    # ---------------- entropy
    t = time.perf_counter()
    names = inp.client_masks.names()
    q0 = "layers.0.self_attn.q_proj"
    draws = engine.flat_many([rng.choice(population, size=k, replace=False) for _ in range(budget.entropy_draws)])
    from secprune.model import decoder_layers
    qw = dict(decoder_layers(inp.model)[0].named_modules())["self_attn.q_proj"].weight
    out["entropy"] = {
        "mask_bit_entropy_q_proj": measures.mask_bit_entropy(inp.client_masks.get(0, q0)),
        "mask_bit_entropy_all": float(measures.binary_entropy(
            sum(float(inp.client_masks.get(0, n).float().sum()) for n in names)
            / sum(int(np.prod(inp.client_masks.shapes[n])) for n in names))),
        "fp16_q_proj": measures.fp16_entropy(qw),
        "across_draws_layer0": measures.information_across_draws(draws, engine),
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
                         seed=inp.seed)
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

    # ---------------- membership inference
    t = time.perf_counter()
    mb = MIABudget(**{**asdict(budget.mia), "client_size": k, "n_clients": m, "seed": budget.seed})
    targets = np.arange(min(mb.targets, n_run))
    out["membership"] = run_membership(engine, targets=targets, population=population, budget=mb)
    out["membership"]["signal_strength"] = signal_strength(engine, targets=targets, population=population, k=k,
                                                           draws=2, seed=budget.seed)
    timings["membership_s"] = time.perf_counter() - t
    _log(f"membership inference ({timings['membership_s']:.0f}s)", quiet)

    # ---------------- token recovery
    t = time.perf_counter()
    recon_out, private = _inversion(inp, budget, k, m)
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


def _inversion(inp: AuditInputs, budget: AuditBudget, k: int, m: int) -> tuple[dict, dict]:
    feats = inv.token_features(inp.model)
    weights = inv.layer0_weights(inp.model)
    qkv = [f"layers.0.{n}" for n in weights]
    cand = torch.from_numpy(np.flatnonzero(inp.vocab_freq > 0))
    rare = inv.population_rare(inp.vocab_freq)
    prior_rank = [int(t) for t in np.argsort(-inp.vocab_freq, kind="stable")]
    counts = {n: sum(inp.client_masks.get(i, n).to(torch.int64) for i in range(m)) for n in qkv}
    union = set(inp.windows.reshape(-1).tolist())
    gen = torch.Generator().manual_seed(budget.seed)
    nrng = np.random.default_rng(budget.seed)
    rr_eps = budget.mia.rr_eps
    lam = budget.mia.skellam_lam
    q = dp.flip_probability(rr_eps)
    per_client, private = [], {"clients": []}
    for c in range(min(budget.inversion_clients, m)):
        true = set(inp.windows[torch.as_tensor(inp.parts[c])].reshape(-1).tolist())
        own = {n: inp.client_masks.get(c, n) for n in qkv}
        views = {
            "own": inv.kept_from_view("own", own),
            "sum": inv.kept_from_view("sum", counts, n_clients=m),
            "rr": inv.kept_from_view(
                "rr", {n: dp.randomized_response(v, rr_eps, generator=gen) for n, v in own.items()}, q=q),
            "noisy_sum": inv.kept_from_view("noisy_sum", {n: v + torch.from_numpy(
                nrng.poisson(lam, v.shape) - nrng.poisson(lam, v.shape)) for n, v in counts.items()}, n_clients=m),
        }
        row = {"client": c, "distinct_tokens": len(true), "prior_baseline": inv.recovery(prior_rank, true, rare=rare),
               "structured": {}}
        priv = {"client": c, "true_tokens": sorted(true), "structured": {}}
        for v, kept in views.items():
            res = inv.structured_attack(kept, weights, feats, candidates=cand)
            ranked = inv.ranked_tokens(res["histogram"])
            if len(ranked) < len(true):  # pad with the prior so that top-K is always K tokens
                seen = set(ranked)
                ranked += [t for t in prior_rank if t not in seen][: len(true) - len(ranked)]
            row["structured"][v] = inv.recovery(ranked, true, rare=rare)
            if v == "sum":
                row["structured_sum_vs_union"] = inv.recovery(ranked, union, rare=rare)
            priv["structured"][v] = ranked[: min(len(true), 50)]
        paper = inv.embedding_inversion({n: inp.client_masks.get(c, n) for n in qkv}, inp.model,
                                        positions=budget.inversion_positions, steps=budget.inversion_steps,
                                        sparsity=inp.sparsity, seed=budget.seed + c, candidates=cand)
        ptoks = paper["tokens"]
        hits = sum(1 for tok in ptoks if tok in true)
        row["paper_embedding_inversion"] = {"positions": len(ptoks), "token_hits": hits,
                                            "token_precision": hits / max(len(ptoks), 1),
                                            "distinct_recall": len(set(ptoks) & true) / max(len(true), 1),
                                            "loss_first": paper["loss_first"], "loss_last": paper["loss_last"]}
        priv["paper_tokens"] = ptoks
        if inp.decode is not None:
            priv["text"] = {"true_first_window": inp.decode(inp.windows[int(inp.parts[c][0])][:64].tolist()),
                            "paper_reconstruction": inp.decode(ptoks),
                            "structured_top_own": [inp.decode([t]) for t in priv["structured"]["own"][:30]],
                            "structured_top_sum": [inp.decode([t]) for t in priv["structured"]["sum"][:30]]}
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

    summary = {"prior_precision": avg(["prior_baseline", "precision"]),
               "paper_token_precision": avg(["paper_embedding_inversion", "token_precision"]),
               "paper_distinct_recall": avg(["paper_embedding_inversion", "distinct_recall"])}
    for v in ("own", "sum", "rr", "noisy_sum"):
        summary[f"structured_{v}_precision"] = avg(["structured", v, "precision"])
        summary[f"structured_{v}_rare_recall"] = avg(["structured", v, "rare_recall"])
    summary["prior_rare_recall"] = avg(["prior_baseline", "rare_recall"])
    return {"clients": per_client, "summary": summary, "views_noise": {"rr_eps": rr_eps, "skellam_lam": lam},
            "candidates": int(len(cand)), "rare_definition": "outside the 1000 most frequent public tokens",
            "layer": 0, "matrices": qkv}, private


def _defence(inp: AuditInputs, budget: AuditBudget, *, h_emp: int) -> dict:
    from secprune.aggregate import final_mask
    from secprune.evaluate import perplexity
    from secprune.federated import apply_masks, restore

    names = inp.client_masks.names()
    m = inp.client_masks.n
    counts = {n: sum(inp.client_masks.get(i, n).to(torch.int64) for i in range(m)) for n in names}
    n_bits = int(sum(c.numel() for c in counts.values()))
    gen = torch.Generator().manual_seed(budget.seed)
    rng = np.random.default_rng(budget.seed)

    def ppl(cnts) -> float | None:
        if inp.eval_windows is None or inp.eval_windows.shape[0] == 0:
            return None
        final = {n: final_mask(c, sparsity=inp.sparsity, group=inp.server_group, seed=inp.seed, name=n)
                 for n, c in cnts.items()}
        backup = apply_masks(inp.model, final)
        try:
            return perplexity(inp.model, inp.eval_windows, progress=False)
        finally:
            restore(inp.model, backup)

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
        noisy = {n: c + torch.from_numpy(rng.poisson(lam, c.shape) - rng.poisson(lam, c.shape))
                 for n, c in counts.items()}
        worst = dp.skellam_epsilon(lam, h=n_bits, delta=budget.delta)
        emp = dp.skellam_epsilon(lam, h=max(h_emp, 1), delta=budget.delta)
        gauss = dp.gaussian_epsilon(math.sqrt(2 * lam), h=n_bits, delta=budget.delta)
        rows.append({"mechanism": "skellam", "param": lam, "noise_sd": math.sqrt(2 * lam), "ppl": ppl(noisy),
                     "eps_worst": worst["eps"], "eps_worst_gaussian_reference": gauss["eps"],
                     "eps_empirical_sensitivity": emp["eps"]})
    return {"rows": rows, "n_bits": n_bits, "h_worst": n_bits, "h_empirical": h_emp, "delta": budget.delta,
            "eval_windows": 0 if inp.eval_windows is None else int(inp.eval_windows.shape[0]),
            "sensitivity_note": ("eps_worst uses h = every mask bit (a window or a client can change them all): "
                                 "the only guarantee. eps_empirical_sensitivity uses the largest Hamming change "
                                 "seen in the sensitivity audit: a heuristic, NOT a DP guarantee."),
            "rr_note": "noisy counts sampled exactly as Binomial(c, 1-q) + Binomial(m-c, q)",
            "strategy_note": "one-shot: client masks do not depend on the server, so noise is added post hoc"}


def _summary(out: dict) -> dict:
    mem = out["membership"]["results"]
    sens = out["sensitivity"]
    s = {
        "epsilon_statement": (
            "Without added noise the shared mask is a deterministic function of the private calibration "
            "data, so no finite epsilon holds: the true epsilon is unbounded. The paper's 'epsilon about 0.05' "
            "is not a differential-privacy guarantee. Empirical lower bounds from our attacks are below."),
        "mask_entropy_bits": out["entropy"]["mask_bit_entropy_q_proj"],
        "fp16_entropy_bits": out["entropy"]["fp16_q_proj"]["bits"],
        "similarity_all_layers": out["similarity"]["run_clients_all_layers"]["mean"],
        "sensitivity_replace_layer0": sens["layer0"].get("replace", {}).get("mean"),
        "sensitivity_remove_layer0": sens["layer0"].get("remove", {}).get("mean"),
        "sensitivity_replace_all_layers": float(np.mean(sens["all_layers"]["replace"]["total"]))
        if "replace" in sens["all_layers"] else None,
        "sensitivity_remove_all_layers": float(np.mean(sens["all_layers"]["remove"]["total"]))
        if "remove" in sens["all_layers"] else None,
        "mia_signal_hamming": out["membership"]["signal_strength"]["mean"],
        "mia": {key: {"auc": r["auc"], "tpr_at_1pct_fpr": r["tpr_at_1pct_fpr"],
                      "eps_lower_bound": r["empirical_epsilon"]["eps_lower_bound"]} for key, r in mem.items()},
        "inversion": out["inversion"]["summary"],
        "information_bits_layer0": out["entropy"]["across_draws_layer0"]["sum_bit_entropy_bits"],
    }
    s["max_eps_lower_bound"] = max(v["eps_lower_bound"] for v in s["mia"].values())
    return s


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


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
        write_json_atomic(folder / "reconstructions.json", private)
        outdir.make_private(folder / "reconstructions.json")
    write_json_atomic(out_dir / "audit.json", result)


# ---------------------------------------------------------------- loading a run folder
def inputs_from_run(run_dir: Path, budget: AuditBudget, *, eval_windows: int | None = None,
                    client_data: list[str] | None = None) -> AuditInputs:
    """Everything the audit needs from a `secprune prune --save-client-masks` folder.

    The run keeps no calibration token ids unless it was asked to (``--keep-calibration``). Otherwise the
    windows are recomputed from the data the run was given (``client_data`` overrides the paths of its
    ``--client-data`` files), exactly as the run drew them, and checked against the run's own layer-0
    client masks, so an audit of changed data is refused instead of silently measuring something else.
    """
    from secprune import calibration, data
    from secprune import summary as run_summary
    from secprune.config import PruneConfig
    from secprune.model import UsageError, load_model, param_names

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
    if client_data:
        if len(client_data) != len(cfg.client_data):
            raise UsageError(f"--client-data: the run had {len(cfg.client_data)} clients' files, got "
                             f"{len(client_data)} paths")
        cfg.client_data = list(client_data)
    model, tok = load_model(cfg.model, device="cpu")
    masks = MaskSet.load(mask_path, names={v: k for k, v in param_names(model).items()})
    kept = run_dir / "private" / "calibration.pt"
    if kept.is_file():
        cal = torch.load(kept, weights_only=False)
        windows, parts = cal["windows"], [np.asarray(p) for p in cal["parts"]]
    else:
        calib = calibration.build(cfg, tok)
        windows, parts = calib.windows, calib.parts
        _check_recomputed(model, windows, parts, masks, cfg)
    names = [s.strip() for s in cfg.calib.split(",") if s.strip()] if not cfg.client_data else ["wiki-lead"]
    rng = np.random.default_rng(10_000 + budget.seed)
    pops, freq = [], np.zeros(len(tok), dtype=np.float64)
    for i, name in enumerate(names):
        ids = calibration._source_ids(name, tok)
        n = len(np.array_split(np.arange(budget.population), len(names))[i])
        if n:
            pops.append(data.sample_windows(ids, n=n, seqlen=cfg.seqlen, rng=rng, bos=data.window_bos(tok)))
        freq += np.bincount(ids.numpy(), minlength=len(tok))[: len(tok)]
    ev = None
    n_eval = budget.eval_windows if eval_windows is None else eval_windows
    ppl_sets = [e for e in cfg.eval if e != "zero-shot"]  # the audits' utility numbers are perplexities
    if n_eval > 0 and ppl_sets:
        ev = calibration.eval_set(ppl_sets[0], tok, seqlen=cfg.eval_seqlen, max_windows=n_eval)
    return AuditInputs(model=model, windows=windows, parts=parts,
                       client_masks=masks, population=torch.cat(pops), vocab_freq=freq, eval_windows=ev,
                       method=cfg.method, sparsity=cfg.sparsity, local_group=cfg.local_group,
                       server_group=cfg.server_group, seed=cfg.seed, batch_size=cfg.batch_size,
                       decode=lambda ids: tok.decode(ids),
                       run_info={"run_dir": str(run_dir), "model": cfg.model, "calib": cfg.calib,
                                 "clients": len(parts), "nsamples": cfg.nsamples, "seqlen": cfg.seqlen,
                                 "eval_set": ppl_sets[0] if ppl_sets else None,
                                 "calibration": "kept by the run" if kept.is_file() else "recomputed and verified",
                                 "run_perplexity": summary.get("results", {}).get("federated")})


def _check_recomputed(model, windows: torch.Tensor, parts: list[np.ndarray], masks: MaskSet, cfg) -> None:
    """Layer-0 masks of client 0 from the recomputed windows must be the run's (a different text gives
    several percent of different bits; the same text gives none)."""
    from secprune.model import UsageError

    engine = LayerZeroMasks(model, windows[torch.as_tensor(parts[0])], method=cfg.method, sparsity=cfg.sparsity,
                            local_group=cfg.local_group, seed=cfg.seed, batch_size=cfg.batch_size)
    mine = engine.flat(np.arange(len(parts[0])))
    theirs = torch.cat([masks.get(0, n).reshape(-1) for n in engine.layout.names])
    differ = float((mine != theirs).float().mean())
    if differ > 1e-4:
        raise UsageError(f"--run: the calibration recomputed from the run's data does not reproduce its client "
                         f"masks ({100 * differ:.2f}% of layer-0 bits differ): the data changed since the run; "
                         "pass the original files with --client-data, or rerun prune with --keep-calibration")
