"""FedPrLLM Table 1 takeaways on one model: comparison groups x one-shot/iterative x scaling, plus baselines.

    python -m secprune.experiments.fedprllm_table --clients 16 --nsamples 32 --seqlen 512 --sparsity 0.5

Every cell is cached in ``--cache`` (JSON) so an interrupted sweep resumes. Perplexity on PTB test
and wiki-lead (Wikipedia lead sections; NOT WikiText-2) with a window budget.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from secprune import calibration
from secprune.config import PruneConfig
from secprune.evaluate import evaluate_model
from secprune.experiments._common import ResultCache
from secprune.fedprllm.aggregate import scale_factor
from secprune.fedprllm.driver import LocalSpec, federated_prune, local_prune, server_masks
from secprune.methods import make_method
from secprune.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--local-group", default="row")
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--calib", default="wiki-lead")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--local-only-clients", type=int, default=4)
    ap.add_argument("--skip-iterative", action="store_true")
    ap.add_argument("--iterative-groups", nargs="+", default=["layer", "row", "column"],
                    choices=["layer", "row", "column"], help="server groups of the iterative cells (one prune each "
                                                             "and per scaling; one-shot cells re-aggregate one run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="runs/fedprllm_table.json")
    args = ap.parse_args()

    cfg = PruneConfig(model=args.model, method=args.method, clients=args.clients, nsamples=args.nsamples,
                      seqlen=args.seqlen, sparsity=args.sparsity, local_group=args.local_group,
                      partition=args.partition, calib=args.calib, eval_windows=args.eval_windows,
                      eval_seqlen=args.eval_seqlen, seed=args.seed).validate()
    tag = f"{args.model}|{args.method}|m{args.clients}|n{args.nsamples}x{args.seqlen}|s{args.sparsity}|" \
          f"{args.local_group}|{args.partition}|{args.calib}|ev{args.eval_windows}x{args.eval_seqlen}|seed{args.seed}"
    cache = ResultCache(args.cache)
    model, tok = load_model(cfg.model)
    calib = calibration.build(cfg, tok)
    spec = LocalSpec(make_method(cfg.method), cfg.sparsity, cfg.local_group, cfg.seed, cfg.batch_size)
    m = len(calib.parts)

    def cell(key: str, fn):
        full = f"{tag}|{key}"
        if cache.get(full) is None:
            t = time.perf_counter()
            res = fn()
            res["seconds"] = time.perf_counter() - t
            cache.put(full, res)
            print(f"{key}: {res}", flush=True)
        return cache.get(full)

    evals = {name: calibration.eval_set(name, tok, seqlen=cfg.eval_seqlen, max_windows=cfg.eval_windows)
             for name in cfg.eval}

    def evaluate(masks, scales, label):
        return evaluate_model(model, evals, masks=masks, scales=scales, label=label)

    rows = {"Dense": cell("dense", lambda: evaluate(None, None, "dense"))}
    cen = {}

    def centralized():  # plain Wanda on every window: no server top-k on top (issue 13)
        cen["masks"], _ = local_prune(model, calib.windows, spec=spec, desc="central")
        return evaluate(cen["masks"], None, "centralized")
    rows["Centralized"] = cell("centralized-plain", centralized)

    one = {}

    def oneshot():
        if "r" not in one:
            one["r"] = federated_prune(model, calib.windows, calib.parts, spec=spec, desc="one-shot")
        return one["r"]

    def local_only():
        k = min(args.local_only_clients, m)
        per = [evaluate(oneshot().client_masks.party(i), None, f"local {i}") for i in range(k)]
        return {n: float(np.mean([p[n] for p in per])) for n in cfg.eval} | {"clients_evaluated": k,
                                                                            "per_client": per}
    rows[f"Local-only (mean of {min(args.local_only_clients, m)})"] = cell("local-only", local_only)

    for strategy in ("one-shot", "iterative"):  # one-shot cells first: they share one client run
        if strategy == "iterative" and args.skip_iterative:
            continue
        for scaling in (False, True):
            for group in ("layer", "row", "column") if strategy == "one-shot" else args.iterative_groups:
                def run_cell(group=group, scaling=scaling, strategy=strategy):
                    if strategy == "one-shot":
                        r = oneshot()
                        final = server_masks(r.counts, sparsity=cfg.sparsity, group=group, seed=cfg.seed)
                    else:
                        r = federated_prune(model, calib.windows, calib.parts, spec=spec, strategy="iterative",
                                            server_group=group, scaling=scaling, desc=f"iterative {group}")
                        final = r.final
                    scales = {n: scale_factor(c, m) for n, c in r.counts.items()} if scaling else None
                    return evaluate(final, scales, f"{strategy} {group}")
                rows[f"FedPrLLM {group} {strategy} {'scaled' if scaling else '-'}"] = cell(
                    f"{strategy}|{group}|{scaling}", run_cell)

    print(f"\n{args.model}, {args.method} ({args.local_group}), {m} clients, {args.nsamples} x {args.seqlen} "
          f"calibration ({args.calib}, {args.partition}), sparsity {args.sparsity}; perplexity on "
          f"{args.eval_windows} x {args.eval_seqlen}-token windows\n")
    print("| method | PTB | wiki-lead |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ptb']:.2f} | {r['wiki-lead']:.2f} |")


if __name__ == "__main__":
    main()
