"""`secprune audit` and `secprune report` (registered by secprune.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secprune.model import UsageError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from exc


def register(sub) -> None:
    p = sub.add_parser("audit", help="privacy attacks and audits on a pruning run (FedPrLLM App. C and stronger)")
    p.add_argument("--run", help="a `secprune prune --save-client-masks` output folder; if it does not exist (or "
                                 "is omitted), a run is made first with the prune flags below")
    p.add_argument("--out", default="runs/audit", help="audit folder (audit.json, private/)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--report", help="also write the report to this folder")
    p.add_argument("--show-reconstructions", action="store_true", help="with --report: include recovered text")
    g = p.add_argument_group("one-shot prune+audit (used when --run is missing)")
    g.add_argument("--model", default="smollm2-135m")
    g.add_argument("--clients", type=int, default=16)
    g.add_argument("--nsamples", type=int, default=32)
    g.add_argument("--seqlen", type=int, default=512)
    g.add_argument("--method", default="wanda", choices=["wanda", "magnitude"])
    g.add_argument("--calib", default="wiki-lead")
    g.add_argument("--sparsity", type=float, default=0.5)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prune-eval-windows", type=int, default=4)
    b = p.add_argument_group("budgets (defaults finish in minutes on 2 CPU cores)")
    b.add_argument("--population", type=int, default=32, help="extra public windows for shadow sets")
    b.add_argument("--entropy-draws", type=int, default=16)
    b.add_argument("--sensitivity-pairs", type=int, default=16, help="layer-0 neighbour pairs per kind")
    b.add_argument("--full-depth-pairs", type=int, default=1, help="all-layer neighbour pairs per kind")
    b.add_argument("--mia-targets", type=int, default=6)
    b.add_argument("--mia-shadows-in", type=int, default=12)
    b.add_argument("--mia-shadows-out", type=int, default=32)
    b.add_argument("--mia-eval-in", type=int, default=6)
    b.add_argument("--mia-eval-out", type=int, default=32)
    b.add_argument("--view-rr-eps", type=float, default=2.0, help="eps per bit of the noisy own-mask view")
    b.add_argument("--view-skellam-lam", type=float, default=50.0, help="Skellam lam of the noisy-sum view")
    b.add_argument("--inversion-clients", type=int, default=2)
    b.add_argument("--inversion-steps", type=int, default=100)
    b.add_argument("--defence-rr-eps", default="0.5,2,8", help="eps per bit values for the utility curve")
    b.add_argument("--defence-skellam-lam", default="2,32,512", help="Skellam lam values for the utility curve")
    b.add_argument("--eval-windows", type=int, default=4, help="perplexity windows for the defence curve")
    b.add_argument("--delta", type=float, default=1e-5)
    b.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_audit)

    r = sub.add_parser("report", help="HTML + Markdown + JSON report of an audit folder")
    r.add_argument("--audit", required=True, help="folder written by `secprune audit`")
    r.add_argument("--out", required=True, help="report folder")
    r.add_argument("--show-reconstructions", action="store_true",
                   help="include reconstructed and original private text (redacted by default)")
    r.set_defaults(func=cmd_report)


def budget_from_args(args: argparse.Namespace):
    from secprune.attacks.membership import MIABudget
    from secprune.audits.runner import AuditBudget

    for name in ("population", "entropy_draws", "mia_targets", "mia_shadows_in", "mia_shadows_out", "mia_eval_in",
                 "mia_eval_out", "eval_windows"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if args.mia_shadows_out < 1 or args.mia_eval_out < 2 or args.mia_eval_in < 1 or args.mia_targets < 1:
        raise UsageError("--mia-*: need at least 1 target, 1 out-shadow, 1 member and 2 non-member trials")
    if not 0 < args.delta < 1:
        raise UsageError(f"--delta must lie in (0, 1), got {args.delta}")
    if args.view_rr_eps <= 0 or args.view_skellam_lam <= 0:
        raise UsageError("--view-rr-eps and --view-skellam-lam must be > 0")
    mia = MIABudget(targets=args.mia_targets, shadows_in=args.mia_shadows_in, shadows_out=args.mia_shadows_out,
                    eval_in=args.mia_eval_in, eval_out=args.mia_eval_out, rr_eps=args.view_rr_eps,
                    skellam_lam=args.view_skellam_lam, seed=args.seed)
    return AuditBudget(population=args.population, entropy_draws=max(args.entropy_draws, 2),
                       sensitivity_pairs=args.sensitivity_pairs, full_depth_pairs=args.full_depth_pairs, mia=mia,
                       inversion_clients=args.inversion_clients, inversion_steps=args.inversion_steps,
                       rr_eps=_floats(args.defence_rr_eps), skellam_lam=_floats(args.defence_skellam_lam),
                       eval_windows=args.eval_windows, delta=args.delta, seed=args.seed)


def cmd_audit(args: argparse.Namespace) -> int:
    import shutil

    from secprune.audits.runner import inputs_from_run, run_core, save_audit

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out: {out} exists and is not empty; pass --overwrite or choose another folder")
    budget = budget_from_args(args)
    run_dir = Path(args.run) if args.run else out / "run"
    if not (run_dir / "summary.json").is_file():
        if args.run and run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"--run: {run_dir} is not a `secprune prune` output folder")
        from secprune.config import PruneConfig
        from secprune.run import run_prune

        cfg = PruneConfig(model=args.model, clients=args.clients, nsamples=args.nsamples, seqlen=args.seqlen,
                          method=args.method, calib=args.calib, sparsity=args.sparsity, seed=args.seed,
                          eval_windows=args.prune_eval_windows, eval_seqlen=args.seqlen, baselines=["dense"],
                          save_client_masks=True, out=str(run_dir), overwrite=True)
        if not args.quiet:
            print(f"[audit] pruning first: {run_dir}", flush=True)
        run_prune(cfg, progress=not args.quiet)
    inputs = inputs_from_run(run_dir, budget)
    result, private = run_core(inputs, budget, quiet=args.quiet)
    if out.exists() and args.overwrite:
        for child in ("audit.json", "private"):
            target = out / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    save_audit(out, result, private)
    info = {"audit": str(out / "audit.json"), "summary": {k: v for k, v in result["summary"].items()
                                                         if k != "epsilon_statement"}}
    if args.report:
        from secprune.report import write_report

        info["report"] = write_report(out, Path(args.report), show_reconstructions=args.show_reconstructions)
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from secprune.report import write_report

    audit = Path(args.audit)
    if not (audit / "audit.json").is_file():
        raise UsageError(f"--audit: {audit} has no audit.json (run `secprune audit` first)")
    print(json.dumps(write_report(audit, Path(args.out), show_reconstructions=args.show_reconstructions), indent=1))
    return 0
