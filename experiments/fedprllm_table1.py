"""FedPrLLM Table 1 rows for one model: perplexity and zero-shot accuracy of dense, centralized, local-only
and FedPrLLM (one-shot, layer comparison, no scaling: the paper's recommended setting) at several sparsities.

    python -m secprune.experiments.fedprllm_table1 --model qwen2.5-0.5b --sparsities 0.5 0.6 0.7 \\
        --clients 16 --nsamples 32 --seqlen 512 --zeroshot-examples 100 --out runs/table1

Each sparsity is one ``secprune prune`` run (the same pipeline, baselines and ``evaluate_model`` path as the
CLI) written to ``<out>/<model>/s<sparsity>/``; a finished run is read back instead of recomputed and an
interrupted one resumes from its checkpoints, so rerunning the command resumes the table. The dense model is
evaluated once (in the first sparsity's run). The Markdown table goes to ``<out>/<model>/table1.md`` and
stdout. The zero-shot mean is over the tasks given (default: FedPrLLM's seven, without RTE); perplexity
on PTB and wiki-lead (Wikipedia lead sections, NOT WikiText-2); the model's weights line says how they were
quantized.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secprune.config import PruneConfig
from secprune.models_registry import MODELS
from secprune.zeroshot_data import FEDPRLLM_TASKS, TASK_SPECS, TASKS

ROWS = (("dense", "Dense"), ("centralized", "Centralized"), ("local-only", "Local-only"), ("federated", "FedPrLLM"))


def run_config(args, sparsity: float, *, with_dense: bool) -> PruneConfig:
    baselines = ["centralized", "local-only"] + (["dense"] if with_dense else [])
    return PruneConfig(model=args.model, clients=args.clients, nsamples=args.nsamples, seqlen=args.seqlen,
                       calib=args.calib, sparsity=sparsity, seed=args.seed, batch_size=args.batch_size,
                       eval=["ptb", "wiki-lead", "zero-shot"], eval_windows=args.eval_windows,
                       eval_seqlen=args.eval_seqlen, zeroshot_tasks=list(args.zeroshot_tasks),
                       zeroshot_examples=args.zeroshot_examples, baselines=baselines,
                       local_only_clients=args.local_only_clients,
                       out=str(Path(args.out) / args.model.replace("/", "_") / f"s{sparsity:g}"), overwrite=True)


def summary_of(cfg: PruneConfig, *, progress: bool) -> dict:
    """The finished run's summary.json if its configuration is this one, else run it (resuming if possible)."""
    from secprune.run import run_prune

    path = Path(cfg.out) / "summary.json"
    if path.exists():
        summ = json.loads(path.read_text())
        if summ.get("config") == PruneConfig(**cfg.to_dict()).validate().to_dict():
            return summ
    return run_prune(cfg, progress=progress)


def table(args, summaries: dict[float, dict]) -> str:
    first = summaries[min(summaries)]
    model = first["model"]
    tasks = list(args.zeroshot_tasks)
    n = {t: first["evaluation"]["zero-shot"]["tasks"][t]["n"] for t in tasks}
    lines = [f"**{MODELS[args.model].title if args.model in MODELS else args.model}** "
             f"({model['class']}, {model['decoder_layers']} blocks)",
             "",
             f"Weights: {model.get('weights', 'as in the checkpoint folder')}.",
             f"Wanda, {args.clients} clients, {args.nsamples} x {args.seqlen}-token calibration windows "
             f"({args.calib}, iid), seed {args.seed}. Perplexity on {args.eval_windows} x {args.eval_seqlen}-token "
             "windows of PTB test and wiki-lead (Wikipedia lead sections, not WikiText-2). Zero-shot: lm-eval "
             f"scoring, acc; questions per task: {', '.join(f'{TASK_SPECS[t].title} {n[t]}' for t in tasks)}. "
             f"Local-only: mean of {args.local_only_clients} clients' own models. FedPrLLM: one-shot, layer "
             "comparison, no scaling.",
             "",
             "| Sparsity | Method | PTB | wiki-lead | Zero-shot mean | " +
             " | ".join(TASK_SPECS[t].title for t in tasks) + " |",
             "|---|---|---|---|---|" + "---|" * len(tasks)]
    dense = first["results"]["dense"]
    for s in sorted(summaries):
        res = summaries[s]["results"]
        for key, label in ROWS:
            if key == "dense" and s != min(summaries):
                continue
            r = dense if key == "dense" else res[key]
            zs = r["zero-shot"]
            cells = [f"{r['ptb']:.2f}", f"{r['wiki-lead']:.2f}", f"{100 * zs['mean_acc']:.2f}",
                     *(f"{100 * zs['tasks'][t]['acc']:.1f}" for t in tasks)]
            lines.append(f"| {'0%' if key == 'dense' else f'{100 * s:g}%'} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib", default="wiki-lead")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--zeroshot-tasks", nargs="+", default=list(FEDPRLLM_TASKS), choices=TASKS)
    ap.add_argument("--zeroshot-examples", type=int, default=100)
    ap.add_argument("--local-only-clients", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/table1")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    summaries = {}
    for i, s in enumerate(sorted(args.sparsities)):
        summaries[s] = summary_of(run_config(args, s, with_dense=i == 0), progress=not args.quiet)
    md = table(args, summaries)
    path = Path(args.out) / args.model.replace("/", "_") / "table1.md"
    path.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
