"""Simulation cost: one-shot FedPrLLM with m clients vs one centralized Wanda run over the same tokens.

    python -m secprune.experiments.bench_simulation --clients 16 --nsamples 32 --seqlen 512

Both runs see the same N = nsamples * seqlen calibration tokens, so their FLOPs are equal; the goal is
ratio <= 1.2. Runs alternate (centralized, federated, centralized, ...) and the medians are compared, so
background load affects both; the process CPU time (all threads) is reported beside the wall time, as it
hardly moves with other tenants of a shared machine. Prints one line per repeat and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from secprune import calibration
from secprune.config import PruneConfig
from secprune.fedprllm.driver import LocalSpec, federated_prune
from secprune.methods import make_method
from secprune.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterative", action="store_true", help="also time the iterative strategy")
    ap.add_argument("--json", help="write the timings here")
    args = ap.parse_args()
    cfg = PruneConfig(model=args.model, method=args.method, clients=args.clients, nsamples=args.nsamples,
                      seqlen=args.seqlen, device=args.device).validate()
    model, tok = load_model(cfg.model, device=cfg.device)
    calib = calibration.build(cfg, tok)
    spec = LocalSpec(make_method(cfg.method), cfg.sparsity, cfg.local_group, cfg.seed, cfg.batch_size)
    everything = [np.arange(len(calib.windows))]
    runs = [("centralized", everything, "one-shot"), ("one-shot", calib.parts, "one-shot")]
    runs += [("iterative", calib.parts, "iterative")] if args.iterative else []
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for rep in range(args.repeats):
        for name, parts, strategy in runs:
            t, c = time.perf_counter(), time.process_time()
            federated_prune(model, calib.windows, parts, spec=spec, strategy=strategy, desc=name, progress=False)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)  # all threads of this process: robust to other tenants
            print(f"repeat {rep} {name:12s} {times[name][-1]:8.1f} s wall {cpu[name][-1]:8.1f} s cpu", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    report = {"clients": len(calib.parts), "tokens": int(calib.windows.numel()), "median_s": med,
              "median_cpu_s": med_cpu,
              **{f"ratio_{k}_vs_centralized": v / med["centralized"] for k, v in med.items() if k != "centralized"},
              **{f"cpu_ratio_{k}_vs_centralized": v / med_cpu["centralized"] for k, v in med_cpu.items()
                 if k != "centralized"}}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
