"""Utility against epsilon of distributed DP, measured with the real pipeline on the real model.

Every point is one complete `secprune prune` run (SmolLM2, FedPrLLM one-shot Wanda, 16 clients,
secure aggregation ``pairwise``): each client adds its Skellam share inside the secure sum
(``--dp-noise skellam --dp-lambda LAMBDA``), the server sees only the noisy vote sums, and the final mask
is evaluated (perplexity on PTB and wiki-lead). Epsilon is the run's own accounting (``summary.json``
section ``differential_privacy``: worst-case sensitivity, every mask bit a client sends).

Usage:
    python experiments/dp_utility_curve.py --out runs/dp_curve [--lambdas 0.5 4 32 1000 1e6] [--eval-windows 8]

Resumable: each finished run is kept in ``<out>/lam-<LAMBDA>/`` and reused; the table is printed as JSON
and written to ``<out>/curve.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def run_point(out: Path, lam: float | None, args) -> dict:
    from secprune import summary
    from secprune.config import PruneConfig
    from secprune.run import run_prune

    folder = out / ("no-noise" if lam is None else f"lam-{lam:g}")
    if not (folder / "summary.json").is_file():
        extra = {} if lam is None else {"dp_noise": "skellam", "dp_lambda": float(lam)}
        cfg = PruneConfig(model=args.model, clients=args.clients, nsamples=args.nsamples, seqlen=args.seqlen,
                          sparsity=args.sparsity, secure_agg="pairwise", eval=["ptb", "wiki-lead"],
                          eval_windows=args.eval_windows, baselines=["dense"] if lam is None else [],
                          out=str(folder), overwrite=True, seed=args.seed, **extra)
        run_prune(cfg.validate(), progress=False)
    s = summary.load(folder)
    row = {"lam": lam, "ptb": s["results"]["federated"]["ptb"], "wiki-lead": s["results"]["federated"]["wiki-lead"],
           "prune_s": s["time_s"]["prune_s"], "secure_agg_bytes": s["secure_aggregation"]["total_bytes"],
           "client_bits_per_entry": s["secure_aggregation"].get("client_sent_bits_per_entry")}
    if "dense" in s["results"]:
        row["dense"] = {k: s["results"]["dense"][k] for k in ("ptb", "wiki-lead")}
    d = s.get("differential_privacy")
    row.update({"epsilon": math.inf if d is None else d["epsilon"],
                "delta": None if d is None else d["delta_total"],
                "noise_sd": 0.0 if d is None else d["noise_sd_guaranteed"],
                "entries": None if d is None else d["entries"]})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/dp_curve")
    ap.add_argument("--lambdas", nargs="+", type=float, default=[0.5, 4.0, 32.0, 1e3, 1e6])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_point(out, None, args)] + [run_point(out, lam, args) for lam in args.lambdas]
    (out / "curve.json").write_text(json.dumps(rows, indent=1, default=str))
    print(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
