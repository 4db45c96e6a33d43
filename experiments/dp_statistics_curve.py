"""Utility against epsilon of DP at the source (``--dp statistics``), with the real pipeline and model.

Every point is one complete `secprune prune` run: FedPrLLM one-shot Wanda, ``--clients`` clients holding
``--per-client`` windows each of ``--calib`` (their domain), evaluated on held-out text of that corpus
(in-domain) and on ``--other`` (another corpus). Two baselines: the non-private run, and pruning with public
data only (``--public``, a corpus the clients do not hold, same number of windows, no noise). A private run is
worth its cost only where it beats public-only in-domain; magnitude pruning (no data at all) is what a
statistic drowned in noise degrades towards.

Usage:
    python -m secprune.experiments.dp_statistics_curve --out runs/dp_stats [--epsilons 1 2 4 8 16]
        [--units window client] [--per-client 32] [--seqlen 128] [--model smollm2-135m]

Resumable: each finished run is kept in ``<out>/<point>/`` and reused; the table is printed as JSON and
written to ``<out>/curve.json`` (and ``curve.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_point(folder: Path, args, **extra) -> dict:
    from secprune import summary
    from secprune.config import PruneConfig
    from secprune.run import run_prune

    if not (folder / "summary.json").is_file():
        kw = {"calib": args.calib} | extra
        cfg = PruneConfig(model=args.model, clients=args.clients, nsamples=args.clients * args.per_client,
                          seqlen=args.seqlen, sparsity=args.sparsity, eval=[args.calib_eval, args.other],
                          eval_windows=args.eval_windows, baselines=[], out=str(folder), overwrite=True,
                          seed=args.seed, **kw)
        run_prune(cfg.validate(), progress=False)
    s = summary.load(folder)
    fed = s["results"]["federated"]
    dp = s.get("differential_privacy", {})
    return {"in_domain": fed[args.calib_eval], "other": fed[args.other], "prune_s": s["time_s"]["prune_s"],
            "epsilon_spent": dp.get("epsilon_spent_max"), "noise_multiplier": (dp.get("noise_multipliers") or
                                                                                [None])[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/dp_stats")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib", default="wiki-lead", help="the clients' domain")
    p.add_argument("--public", default="brown", help="the public corpus of the public-only baseline")
    p.add_argument("--other", default="ptb", help="the other evaluation corpus")
    p.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--units", nargs="+", default=["window"], choices=["window", "client"])
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.calib_eval = args.calib
    out = Path(args.out) / f"{args.model}-{args.clients}x{args.per_client}x{args.seqlen}"
    rows = [{"point": "non-private", **run_point(out / "non-private", args)},
            {"point": f"public-only ({args.public})", **run_point(out / "public-only", args, calib=args.public)},
            {"point": "magnitude (no data)", **run_point(out / "magnitude", args, method="magnitude")}]
    for unit in args.units:
        for eps in args.epsilons:
            rows.append({"point": f"eps={eps:g} per {unit}", "epsilon": eps, "unit": unit,
                         **run_point(out / f"dp-{unit}-{eps:g}", args, dp="statistics", dp_epsilon=eps, dp_unit=unit)})
            (out / "curve.json").write_text(json.dumps(rows, indent=1))
    (out / "curve.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))
    _plot(rows, out / "curve.png", args)
    return 0


def _plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "in_domain", f"{args.calib} (clients' domain)"), (axes[1], "other", args.other)):
        for unit in args.units:
            pts = sorted((r["epsilon"], r[key]) for r in rows if r.get("unit") == unit)
            ax.plot([e for e, _ in pts], [v for _, v in pts], "o-", label=f"--dp statistics, per {unit}")
        ax.axhline(rows[0][key], color="k", ls="--", label="non-private")
        ax.axhline(rows[1][key], color="tab:red", ls=":", label=rows[1]["point"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_ylabel(f"perplexity at {args.sparsity:.0%}")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{args.model}, {args.clients} clients x {args.per_client} windows x {args.seqlen} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
