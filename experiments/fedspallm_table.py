"""FedSpaLLM's Tables 1-3 on a real causal LM (``--model``, default SmolLM2-135M): FedSpaLLM vs standalone vs random
vs FedPrLLM's best recipe.

For every client count (4, 8, 16) and sparsity (50/60/70 %), on the same seeded calibration windows:

* ``fedspallm``: SparseGPT + OBS update at every client, l0-norm aggregation (Eq. 5), adaptive mask expansion
  (Eqs. 6-7), one round, every client prunes every layer (as the paper's tables);
* ``standalone``: each client's own SparseGPT model (round 1 of the same run), mean perplexity over the first
  ``--standalone-clients`` clients;
* ``random``: a seeded uniform random mask at the target sparsity (independent of the clients, run once);
* ``fedprllm``: FedPrLLM's best recipe (one-shot, layer-wise server comparison, no weight scaling, Wanda at
  the clients, row-wise local comparison) via :func:`secprune.fedprllm.driver.federated_prune`.

Perplexity on PTB (test) and wiki-lead (Wikipedia lead sections, test split; NOT WikiText-2). Each cell's
result is cached in ``--cache`` (JSON) so an interrupted run resumes; the Markdown table is printed at the end.
A FedSpaLLM cell in progress also checkpoints every layer (``--checkpoint``, owner-only, removed once the cell is
cached), so a cell of hours on a real model resumes after its last finished layer, not from the start.

Usage: ``python experiments/fedspallm_table.py`` (full grid) or e.g.
``python experiments/fedspallm_table.py --clients 4 --sparsities 0.5 --eval-windows 4`` to time one cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on a shared 2-core box

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secprune import calibration  # noqa: E402
from secprune.config import PruneConfig  # noqa: E402
from secprune.evaluate import perplexity  # noqa: E402
from secprune.experiments._common import ResultCache, fedspa_key  # noqa: E402
from secprune.fedprllm.driver import LocalSpec, federated_prune  # noqa: E402
from secprune.fedspallm.baselines import random_masks  # noqa: E402
from secprune.fedspallm.driver import FedSpaSpec, fedspallm_prune  # noqa: E402
from secprune.methods import Wanda  # noqa: E402
from secprune.model import load_model  # noqa: E402
from secprune.models_registry import MODELS  # noqa: E402
from secprune.surgery import apply_masks, apply_weights, restore, restore_weights  # noqa: E402

DATASETS = ("ptb", "wiki-lead")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    p.add_argument("--methods", nargs="+", default=["fedspallm", "standalone", "random", "fedprllm"],
                   choices=["fedspallm", "standalone", "random", "fedprllm", "dense"])
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows in total (split over clients)")
    p.add_argument("--samples-per-client", type=int, default=None,
                   help="each client's own windows (the FedSpaLLM paper's protocol, Sec. 5: 32); replaces --nsamples")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--calib", default="wiki-lead")
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--standalone-clients", type=int, default=2)
    p.add_argument("--local-group", default="layer",
                   help="SparseGPT comparison group inside each 128-column block ('layer' = original SparseGPT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--cache", default="runs/fedspallm_table/cells.json")
    p.add_argument("--checkpoint", default=None,
                   help="folder for the per-layer checkpoints of the FedSpaLLM cell in progress (owner-only; each "
                        "cell's subfolder is removed once the cell is cached); default: <cache>.partial")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--table-only", action="store_true", help="print the table from the cache, compute nothing")
    return p.parse_args(argv)


def setting_key(args) -> str:
    """Cache-key prefix: everything that changes the numbers besides method, clients and sparsity."""
    per_client = getattr(args, "samples_per_client", None)
    windows = f"pc{per_client}" if per_client else f"n{args.nsamples}"
    return f"{windows}x{args.seqlen}-{args.calib}-ev{args.eval_windows}x{args.eval_seqlen}-s{args.seed}"


def calib_config(args, clients: int) -> PruneConfig:
    """The calibration of a cell: ``--nsamples`` split over the clients, or ``--samples-per-client`` each."""
    per_client = getattr(args, "samples_per_client", None)
    return PruneConfig(model=args.model, clients=clients, seqlen=args.seqlen, calib=args.calib, seed=args.seed,
                       **({"samples_per_client": per_client} if per_client else {"nsamples": args.nsamples})
                       ).validate()


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = ResultCache(args.cache)
    setting = setting_key(args)
    checkpoints = Path(args.checkpoint or f"{args.cache}.partial")
    if args.table_only:
        print(table(cache, args, setting))
        return 0
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    evals = {name: calibration.eval_set(name, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows)
             for name in DATASETS}
    progress = not args.quiet

    def ppl(label: str) -> dict:
        return {name: perplexity(model, w, desc=f"{label} {name}", progress=progress) for name, w in evals.items()}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.0f}s] {msg}", flush=True)

    if "dense" in args.methods and cache.get(fedspa_key(setting, "dense")) is None:
        cache.put(fedspa_key(setting, "dense"), ppl("dense"))
        log(f"dense {cache.get(fedspa_key(setting, 'dense'))}")
    for s in args.sparsities:
        key = fedspa_key(setting, "random", sparsity=s)
        if "random" in args.methods and cache.get(key) is None:
            backup = apply_masks(model, random_masks(model, sparsity=s, seed=args.seed))
            try:
                cache.put(key, ppl(f"random {s}"))
            finally:
                restore(model, backup)
            log(f"random s={s} {cache.get(key)}")
    for n in args.clients:
        cfg = calib_config(args, n)
        calib = None
        for s in args.sparsities:
            fkey, skey, pkey = (fedspa_key(setting, m, clients=n, sparsity=s)
                                for m in ("fedspallm", "standalone", "fedprllm"))
            need_fed = "fedspallm" in args.methods and cache.get(fkey) is None
            need_sa = "standalone" in args.methods and cache.get(skey) is None
            need_pr = "fedprllm" in args.methods and cache.get(pkey) is None
            if not (need_fed or need_sa or need_pr):
                continue
            if calib is None:
                calib = calibration.build(cfg, tok)
            if need_fed or need_sa:
                t = time.perf_counter()
                spec = FedSpaSpec(sparsity=s, expansion=True, local_group=args.local_group, seed=args.seed)
                k = min(args.standalone_clients, n) if need_sa else 0
                ck = checkpoints / f"c{n}-s{s}"  # the driver's fingerprint refuses another setting's state
                resumed = (ck / "state.pt").exists()  # then prune_s counts only the layers this process ran
                res = fedspallm_prune(model, calib.windows, calib.parts, spec=spec, keep_clients=list(range(k)),
                                      desc=f"fedspallm c{n} s{s}", progress=progress, checkpoint=ck)
                prune_s = time.perf_counter() - t
                if need_fed:
                    backup = apply_weights(model, res.weights)
                    try:
                        out = ppl(f"fedspallm c{n} s{s}")
                    finally:
                        restore_weights(model, backup)
                    out |= {"sparsity": float(sum(int(m.sum()) for m in res.masks.values())
                                              / sum(m.numel() for m in res.masks.values())),
                            "sparsity_intersection": res.rounds[0]["sparsity_intersection"],
                            "prune_s": prune_s, "resumed": resumed,
                            "upload_bytes_per_client": res.communication["total_upload_bytes"] / n}
                    cache.put(fkey, out)
                    log(f"fedspallm c{n} s{s} {out}")
                if need_sa:
                    per = []
                    for i in range(k):
                        backup = apply_weights(model, res.standalone[i])
                        try:
                            per.append(ppl(f"standalone {i} c{n} s{s}"))
                        finally:
                            restore_weights(model, backup)
                    out = {name: float(np.mean([r[name] for r in per])) for name in DATASETS} | {
                        "clients_evaluated": k, "per_client": per}
                    cache.put(skey, out)
                    log(f"standalone c{n} s{s} {out}")
                del res
                shutil.rmtree(ck, ignore_errors=True)  # the cell is cached: its layers are not needed again
            if need_pr:
                t = time.perf_counter()
                fed = federated_prune(model, calib.windows, calib.parts, spec=LocalSpec(Wanda(), s, "row", args.seed),
                                      strategy="one-shot", server_group="layer", scaling=False,
                                      desc=f"fedprllm c{n} s{s}", progress=progress)
                prune_s = time.perf_counter() - t
                backup = apply_masks(model, fed.final)
                try:
                    out = ppl(f"fedprllm c{n} s{s}") | {"prune_s": prune_s}
                finally:
                    restore(model, backup)
                cache.put(pkey, out)
                log(f"fedprllm c{n} s{s} {out}")
    print(table(cache, args, setting))
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v >= 1e4 else f"{v:.2f}"


def table(cache: ResultCache, args, setting: str) -> str:
    cols = [f"{round(s * 100)}% {d}" for s in args.sparsities for d in DATASETS]
    head = "| clients | method | " + " | ".join(cols) + " |"
    per_client = getattr(args, "samples_per_client", None)
    calib = (f"{per_client} x {args.seqlen} tokens of {args.calib} per client" if per_client else
             f"{args.nsamples} x {args.seqlen} tokens of {args.calib} split IID over the clients")
    built_in = MODELS.get(args.model)
    model = f"{built_in.title}, weights {built_in.weights}" if built_in else args.model
    lines = [f"{model}. Calibration {calib}, seed {args.seed}; perplexity on the first {args.eval_windows} x "
             f"{args.eval_seqlen}-token windows of PTB test and wiki-lead test (Wikipedia lead sections, not "
             "WikiText-2).", "", head, "|" + "---|" * (2 + 2 * len(args.sparsities))]
    dense = cache.get(fedspa_key(setting, "dense"))
    if dense:
        lines.append("| - | dense | " + " | ".join(_fmt(dense[d]) for _ in args.sparsities for d in DATASETS) + " |")
    for n in args.clients:
        for m in ("random", "standalone", "fedprllm", "fedspallm"):
            if m not in args.methods:
                continue
            cells = []
            for s in args.sparsities:
                r = cache.get(fedspa_key(setting, m, clients=None if m == "random" else n, sparsity=s))
                cells += [_fmt(r.get(d) if r else None) for d in DATASETS]
            label = {"fedprllm": "FedPrLLM (Wanda, one-shot, layer, no scaling)",
                     "standalone": f"standalone (mean of {min(args.standalone_clients, n)} clients)"}.get(m, m)
            lines.append(f"| {n} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
