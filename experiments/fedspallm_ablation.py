"""FedSpaLLM ablations on a real causal LM (``--model``, default SmolLM2-135M): what adaptive mask expansion, layer
sampling and rounds change.

Same calibration windows and evaluation as ``experiments/fedspallm_table.py`` (its cache supplies the full
FedSpaLLM cell). Variants, each at every ``--sparsities`` value for ``--clients`` clients:

* ``no-expansion``: Eq. 5 without Eqs. 6-7; the global mask is the clients' intersection, so the achieved
  sparsity falls below the target (the paper's motivation for expansion, Sec. 4.2);
* ``sampled-r1`` / ``sampled-r2``: layer sampling (Eq. 8) with heterogeneous resource scores
  ``--resources`` (fraction of the layers per client and round), 1 or 2 rounds;
* ``centralized``: SparseGPT with the OBS update on all windows of all clients (the non-private reference);
* ``ties-magnitude`` / ``ties-random``: full FedSpaLLM with Eq. 7's ties broken by the smaller ``|W_g|`` (the
  default) or by the seeded random priority only; both record how many expansion picks the tie decided;
* ``secure-b16``: full FedSpaLLM with the fixed-point secure sums (plaintext summer, 16 bits; the pairwise and
  he backends give the same sums): error of the averages before masking, of the global weights after, and
  the global-mask entries that differ from the float aggregation's.

Usage: ``python experiments/fedspallm_ablation.py`` (cached in ``--cache``; an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secprune import calibration  # noqa: E402
from secprune.evaluate import perplexity  # noqa: E402
from secprune.experiments._common import ResultCache  # noqa: E402
from secprune.experiments.fedspallm_table import DATASETS, _fmt, calib_config, setting_key  # noqa: E402
from secprune.fedspallm.baselines import standalone_model  # noqa: E402
from secprune.fedspallm.driver import FedSpaSpec, fedspallm_prune  # noqa: E402
from secprune.model import load_model  # noqa: E402
from secprune.surgery import apply_weights, restore_weights  # noqa: E402

VARIANTS = ("no-expansion", "sampled-r1", "sampled-r2", "centralized", "ties-magnitude", "ties-random", "secure-b16")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--resources", type=float, nargs="+", default=[1.0, 0.5, 0.5, 0.25])
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--samples-per-client", type=int, default=None,
                   help="each client's own windows; replaces --nsamples")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--calib", default="wiki-lead")
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="runs/fedspallm_table/ablation.json")
    p.add_argument("--table-cache", default="runs/fedspallm_table/cells.json",
                   help="fedspallm_table.py's cache (read only) for the full FedSpaLLM and dense cells")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    if len(args.resources) not in (1, args.clients):
        p.error(f"--resources: expected 1 value or {args.clients} (one per client), got {len(args.resources)}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cache, table_cache = ResultCache(args.cache), ResultCache(args.table_cache)
    setting = setting_key(args)
    if not args.table_only:
        run(args, cache, setting)
    print(table(cache, table_cache, args, setting))
    return 0


def run(args, cache: ResultCache, setting: str) -> None:
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    progress = not args.quiet
    evals = {name: calibration.eval_set(name, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows)
             for name in DATASETS}
    calib = calibration.build(calib_config(args, args.clients), tok)  # the same windows as fedspallm_table.py

    def evaluate(weights, label: str) -> dict:
        backup = apply_weights(model, weights)
        try:
            return {name: perplexity(model, w, desc=f"{label} {name}", progress=progress)
                    for name, w in evals.items()}
        finally:
            restore_weights(model, backup)

    for s in args.sparsities:
        for v in args.variants:
            key = f"{setting}|{v}|c{args.clients}|s{s}"
            if cache.get(key) is not None:
                continue
            t = time.perf_counter()
            if v == "centralized":
                spec = FedSpaSpec(sparsity=s, seed=args.seed)
                weights = standalone_model(model, calib.windows, np.arange(len(calib.windows)), spec=spec,
                                           progress=progress)
                extra: dict = {}
            else:
                spec = FedSpaSpec(sparsity=s, seed=args.seed, expansion=v != "no-expansion",
                                  layer_sampling=v.startswith("sampled"), resources=list(args.resources),
                                  rounds=2 if v == "sampled-r2" else 1, magnitude_ties=v != "ties-random")
                res = fedspallm_prune(model, calib.windows, calib.parts, spec=spec, desc=f"{v} s{s}",
                                      progress=progress, secure="none" if v == "secure-b16" else None)
                weights = res.weights
                pruned = sum(int(m.sum()) for m in res.masks.values())
                extra = {"sparsity": pruned / sum(m.numel() for m in res.masks.values()),
                         "sparsity_intersection": res.rounds[-1]["sparsity_intersection"],
                         "layers_per_client": res.rounds[0]["layers_per_client"],
                         "upload_bytes_per_client": res.communication["total_upload_bytes"] / args.clients,
                         "expansion_k": res.rounds[0]["expansion_k_total"],
                         "tie_decided": res.rounds[0]["expansion_tie_decided_total"]}
                extra |= {k: res.secagg[k] for k in ("max_abs_error", "max_abs_error_after_masking", "mask_flips",
                                                     "clipped_entries") if k in res.secagg}
            prune_s = time.perf_counter() - t
            cache.put(key, evaluate(weights, f"{v} s{s}") | extra | {"prune_s": prune_s})
            print(f"[{time.perf_counter() - t0:7.0f}s] {v} s{s} {cache.get(key)}", flush=True)


def table(cache: ResultCache, table_cache: ResultCache, args, setting: str) -> str:
    cols = [f"{round(s * 100)}% {d}" for s in args.sparsities for d in DATASETS]
    lines = [f"{args.clients} clients, same calibration and evaluation as fedspallm_table.py; layer sampling with "
             f"resources {args.resources}. Achieved sparsity in brackets.", "",
             "| variant | " + " | ".join(cols) + " |", "|" + "---|" * (1 + len(cols))]
    rows = [("FedSpaLLM (expansion, all layers, 1 round)", lambda s: table_cache.get(
        f"{setting}|fedspallm|c{args.clients}|s{s}"))]
    rows += [(v, lambda s, v=v: cache.get(f"{setting}|{v}|c{args.clients}|s{s}")) for v in args.variants]
    for label, get in rows:
        cells = []
        for s in args.sparsities:
            r = get(s)
            for d in DATASETS:
                cell = _fmt(r.get(d) if r else None)
                if r and d == DATASETS[0] and "sparsity" in r:
                    cell += f" [{r['sparsity']:.3f}]"
                cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
