"""Plot FedSpaLLM's table (``experiments/fedspallm_table.py``'s cache): perplexity against sparsity at a fixed
number of clients, and against the number of clients at a fixed sparsity, for standalone (mean of the
evaluated clients, bars from the best to the worst of them), FedPrLLM and FedSpaLLM, with dense as a line.
Random masks (perplexity 1e5-1e7) would flatten the axes; they stay in the table only.

    python experiments/plot_fedspallm.py --cache runs/fedspallm_qwen05.json --clients 4 --sparsity 0.5 \
        --title "Qwen2.5-Coder-0.5B (GGUF Q4_K_M -> fp32)" --out docs/img/fedspallm_qwen05.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secprune.experiments._common import fedspa_key, parse_fedspa_key, save_figure

METHODS = (("standalone", "standalone", "C0"), ("fedprllm", "FedPrLLM (Wanda)", "C1"), ("fedspallm", "FedSpaLLM", "C2"))
DATASETS = (("ptb", "PTB perplexity"), ("wiki-lead", "wiki-lead perplexity"))


def settings(data: dict) -> list[str]:
    """The cache-key prefixes (calibration and evaluation settings) present in a cache."""
    return sorted({parse_fedspa_key(k)[0] for k in data})


def cells(data: dict, *, setting: str) -> dict[tuple[str, int, float], dict]:
    """(method, clients, sparsity) -> cell for one setting (dense and random cells have no client count)."""
    parsed = {key: parse_fedspa_key(key) for key in data}
    return {(m, n, s): data[key] for key, (st, m, n, s) in parsed.items() if st == setting and n is not None}


def series(found: dict, *, method: str, dataset: str, clients: int | None = None,
           sparsity: float | None = None) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """x, y and (y - best, worst - y) of one method along sparsity (``clients`` fixed) or along clients
    (``sparsity`` fixed); the spread is over a standalone cell's evaluated clients, zero otherwise."""
    pts = sorted((s if clients is not None else n, cell) for (m, n, s), cell in found.items()
                 if m == method and (n == clients if clients is not None else s == sparsity))
    xs, ys, err = [], [], []
    for x, cell in pts:
        y = cell[dataset]
        each = [c[dataset] for c in cell.get("per_client", [])] or [y]
        xs.append(x)
        ys.append(y)
        err.append((y - min(each), max(each) - y))
    return xs, ys, err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="the JSON cache fedspallm_table.py wrote")
    ap.add_argument("--setting", help="cache-key prefix to plot (default: the only one in the cache)")
    ap.add_argument("--clients", type=int, default=4, help="client count of the sparsity panels (default 4)")
    ap.add_argument("--sparsity", type=float, default=0.5, help="sparsity of the client-count panels (0.5)")
    ap.add_argument("--title", default="", help="figure title (model and weights)")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args(argv)
    path = Path(args.cache)
    if not path.is_file():
        raise SystemExit(f"--cache: no such file: {path}")
    data = json.loads(path.read_text())
    present = settings(data)
    if args.setting is None and len(present) != 1:
        raise SystemExit(f"--setting: the cache holds {len(present)} settings, name one of: {', '.join(present)}")
    setting = args.setting or present[0]
    if setting not in present:
        raise SystemExit(f"--setting: {setting!r} is not in the cache (it holds: {', '.join(present)})")
    found = cells(data, setting=setting)
    if not found:
        raise SystemExit(f"--cache: no method cells for setting {setting!r}")
    dense = data.get(fedspa_key(setting, "dense"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, (dataset, label) in enumerate(DATASETS):
        for row, along in enumerate(("sparsity", "clients")):
            ax = axes[row][col]
            for i, (m, name, color) in enumerate(METHODS):
                kw = {"clients": args.clients} if along == "sparsity" else {"sparsity": args.sparsity}
                xs, ys, err = series(found, method=m, dataset=dataset, **kw)
                if not xs:
                    continue
                shift = (i - 1) * (0.6 if along == "sparsity" else 0.15)  # keep the error bars apart
                xs = [100 * x + shift for x in xs] if along == "sparsity" else [x * 2 ** shift for x in xs]
                yerr = [[lo for lo, _ in err], [hi for _, hi in err]]
                ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=name, color=color)
            if dense:
                ax.axhline(dense[dataset], color="grey", ls="--", label="dense")
            if along == "sparsity":
                ax.set(xlabel=f"sparsity (%), {args.clients} clients", ylabel=label, yscale="log")
            else:
                ax.set(xlabel=f"clients, {round(100 * args.sparsity)} % sparsity", ylabel=label, xscale="log")
                ax.set_xticks(sorted({n for (_, n, s) in found if s == args.sparsity}))
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"FedSpaLLM's table: {args.title + ' ' if args.title else ''}[{setting}]", fontsize=9)
    fig.tight_layout()
    print(save_figure(fig, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
