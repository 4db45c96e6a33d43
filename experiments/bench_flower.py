"""Wall time of one federated pruning run under Flower's Deployment Engine vs the in-process simulation.

    python experiments/bench_flower.py --clients 16 --nsamples 32 --seqlen 512 --secure-agg pairwise

Both runs prune the same model with the same clients (partitions of the built-in --calib corpus) and must
give the same global mask; the deployment runs a real SuperLink and one SuperNode process per client on this
machine (`secprune client`), submitted with `secprune serve --superlink`. Prints the two wall times, their
ratio, and where the deployment's time goes: each stage's wall time, and inside the pruning step the
clients' own model loading, pruning and upload (so the rest is Flower's per-message process start, message
transport and waiting for the other clients sharing the 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secprune.cli import main as cli  # noqa: E402
from secprune.flower.localhost import Deployment  # noqa: E402
from secprune.masks import MaskSet  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib", default="wiki-lead")
    ap.add_argument("--secure-agg", default="pairwise", choices=["none", "pairwise"])
    ap.add_argument("--parallel", type=int, default=4, help="clients pruning at once in the deployment")
    ap.add_argument("--work", default="runs/bench_flower")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--clients", str(args.clients), "--nsamples", str(args.nsamples), "--seqlen",
              str(args.seqlen), "--calib", args.calib, "--eval", "--secure-agg", args.secure_agg, "--overwrite"]
    keys = work / "keys"
    if args.secure_agg != "none" and not (keys / "directory.json").exists():
        cli(["keys", "--clients", str(args.clients), "--out", str(keys), "--quiet", "--overwrite"])
    flags = ["--directory", str(keys / "directory.json")] if args.secure_agg != "none" else []

    t = time.perf_counter()
    assert cli(["prune", *common, "--baselines", "--out", str(work / "inprocess"), "--quiet"]) == 0
    t_sim = time.perf_counter() - t

    clients = [["--partition", str(i), "--num-partitions", str(args.clients), "--keys", str(keys),
                "--state-dir", str(work / "state" / f"c{i}")] for i in range(args.clients)]
    dep = Deployment(work / "deploy", clients).start(wait=8.0)
    try:
        time.sleep(10)  # the SuperNodes connect
        t = time.perf_counter()
        done = dep.serve([*common, *flags, "--parallel", str(args.parallel), "--stage-timeout", "1800",
                          "--out", str(work / "flower")], timeout=7200)
        t_dep = time.perf_counter() - t
    finally:
        dep.stop()
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    a = MaskSet.load(work / "inprocess" / "final_mask.safetensors")
    b = MaskSet.load(work / "flower" / "final_mask.safetensors")
    same = all((a.packed[n] == b.packed[n]).all() for n in a.names())
    detail = json.loads((work / "flower" / "log.json").read_text())
    stages = {}
    for s in detail["stages"]:
        stages.setdefault(s["stage"], []).append(s["seconds"])
    timing = [t for step in detail["step_timing"] for t in step.values()]
    wire = detail["wire"]
    report = {
        "clients": args.clients, "tokens": args.nsamples * args.seqlen, "secure_agg": args.secure_agg,
        "in_process_s": t_sim, "deployment_s": t_dep, "ratio": t_dep / t_sim, "masks_identical": bool(same),
        "stage_wall_s": {k: round(sum(v), 1) for k, v in stages.items()},
        "client_step_median_s": {k: round(statistics.median(t[k] for t in timing), 2)
                                 for k in ("model_load_s", "prune_s", "upload_s")},
        "client_step_sum_s": {k: round(sum(t[k] for t in timing), 1) for k in ("model_load_s", "prune_s", "upload_s")},
        "flower_bytes_per_client_median": statistics.median(sum(v.values()) for v in wire["flower_bytes"].values()),
        "protocol_bytes_per_client_median": statistics.median(sum(v.values()) for v in wire["protocol_bytes"].values()),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
