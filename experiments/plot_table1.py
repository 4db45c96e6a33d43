"""Plot FedPrLLM Table 1 runs (``experiments/fedprllm_table1.py`` output): perplexity and zero-shot mean per
method and sparsity, the zero-shot mean with its standard error (per-task binomial errors, combined).

    python experiments/plot_table1.py --runs runs/table1/smollm2-135m --out docs/img/table1_smollm2.png
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

from secprune.experiments._common import save_figure

METHODS = (("centralized", "Centralized"), ("local-only", "Local-only"), ("federated", "FedPrLLM"))


def mean_stderr(zs: dict) -> float:
    """Standard error of the mean accuracy over tasks (independent tasks: sqrt(sum se_t^2) / T)."""
    tasks = zs["tasks"].values()
    ses = [t["acc_stderr"] for t in tasks if "acc_stderr" in t]
    return math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="folder with one s<sparsity>/summary.json per sparsity")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {float(p.parent.name[1:]): json.loads(p.read_text())
            for p in sorted(Path(args.runs).glob("s*/summary.json"))}
    if not runs:
        raise SystemExit(f"--runs: no s<sparsity>/summary.json under {args.runs}")
    dense = runs[min(runs)]["results"]["dense"]
    xs = sorted(runs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in ((axes[0], "ptb", "PTB perplexity"), (axes[1], "wiki-lead", "wiki-lead perplexity")):
        for m, name in METHODS:
            ax.plot([100 * s for s in xs], [runs[s]["results"][m][key] for s in xs], marker="o", label=name)
        ax.axhline(dense[key], color="grey", ls="--", label="dense")
        ax.set(xlabel="sparsity (%)", ylabel=label, yscale="log")
    for i, (m, name) in enumerate(METHODS):
        zs = [runs[s]["results"][m]["zero-shot"] for s in xs]
        axes[2].errorbar([100 * s + (i - 1) * 1.2 for s in xs], [100 * z["mean_acc"] for z in zs],
                         yerr=[100 * mean_stderr(z) for z in zs], marker="o", capsize=3, label=name)
    axes[2].axhline(100 * dense["zero-shot"]["mean_acc"], color="grey", ls="--", label="dense")
    axes[2].set(xlabel="sparsity (%)", ylabel="zero-shot mean acc (%), +- 1 s.e.")
    axes[0].legend(fontsize=8)
    # the weights line up to its first ":" ("GGUF Q4_K_M (...), dequantized to fp32"): the per-type shares
    # are in the table text, and the whole line runs off the figure
    weights = runs[xs[0]]["model"].get("weights", "").split(":")[0]
    fig.suptitle(textwrap.shorten(f"{runs[xs[0]]['model']['name']}: FedPrLLM Table 1, {weights}", 150), fontsize=9)
    fig.tight_layout()
    print(save_figure(fig, args.out))


if __name__ == "__main__":
    main()
