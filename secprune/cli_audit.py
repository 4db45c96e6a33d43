"""`secprune audit` and `secprune report` (registered by secprune.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secprune import log, outdir
from secprune.errors import UsageError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("audit", help="privacy attacks and audits on a pruning run (FedPrLLM App. C and stronger)",
                       description="Entropy, similarity, sensitivity, membership inference, token recovery and "
                                   "the DP defence on a one-shot FedPrLLM run. Audits an existing run (--run), or "
                                   "prunes first into <out>/run with the flags under 'prune first'.")
    p.add_argument("--run", metavar="DIR", help="a `secprune prune --save-client-masks` output folder; without it, "
                                                "a run is made first in <out>/run")
    p.add_argument("--client-data", nargs="+", metavar="PATH",
                   help="the run's client files, if they moved since the run (its calibration is recomputed "
                        "from them and checked against its masks)")
    p.add_argument("--out", default="runs/audit", metavar="DIR",
                   help="audit folder (audit.json) (default: runs/audit)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out (and --report) if they are earlier secprune outputs")
    p.add_argument("--report", metavar="DIR", help="also write the HTML/Markdown/JSON report to this folder")
    p.add_argument("--keep-reconstructions", action="store_true",
                   help="keep the recovered and true tokens, owner-only, in <out>/private/ (off: numbers only)")
    p.add_argument("--show-reconstructions", action="store_true",
                   help="with --report: quote recovered and true text in the report (implies "
                        "--keep-reconstructions; the report folder becomes owner-only)")
    g = p.add_argument_group("prune first (only without --run)")
    g.add_argument("--model", default="smollm2-135m", metavar="NAME|DIR",
                   help="the model to prune (default: smollm2-135m)")
    g.add_argument("--clients", type=int, metavar="N", default=16, help="simulated clients (default: 16)")
    g.add_argument("--nsamples", type=int, metavar="N", default=32, help="calibration windows in total (default: 32)")
    g.add_argument("--seqlen", type=int, metavar="N", default=512, help="tokens per window (default: 512)")
    g.add_argument("--method", default="wanda", choices=["wanda", "magnitude"],
                   help="the clients' pruning method (default: wanda)")
    g.add_argument("--calib", default="wiki-lead", metavar="SOURCES",
                   help="public corpus of the simulated clients (default: wiki-lead)")
    g.add_argument("--sparsity", type=float, metavar="X", default=0.5, help="fraction pruned (default: 0.5)")
    g.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of the run and of every audit draw (default: 0)")
    g.add_argument("--prune-eval-windows", type=int, metavar="N", default=4,
                   help="PTB/wiki-lead windows of the run (default: 4)")
    b = p.add_argument_group("budgets (the defaults finish in minutes on 2 CPU cores)")
    for flag, default, text in (
            ("--population", 96, "public windows disjoint from the run's (half shadow pool, half challenger pool; "
                                  "one-run canaries)"),
            ("--entropy-draws", 16, "independent calibration sets drawn for the entropy estimate"),
            ("--sensitivity-pairs", 16, "layer-0 neighbour pairs per kind"),
            ("--full-depth-pairs", 1, "all-layer neighbour pairs per kind"),
            ("--mia-targets", 8, "membership-inference target windows (one per client)"),
            ("--mia-shadows-in", 12, "shadow sets with the target, per target"),
            ("--mia-shadows-out", 48, "shadow sets without the target (shared by the targets)"),
            ("--mia-eval-in", 24, "member trials per target, one fresh mask each"),
            ("--mia-eval-out", 24, "non-member trials per target, one fresh mask each"),
            ("--one-run-canaries", 96, "canaries of the one-run audit (at most --population)"),
            ("--canary-digits", 4, "digits of the exposure canary's secret (|R| = 10^digits)"),
            ("--canary-secrets", 4, "random secrets per insertion count"),
            ("--inversion-clients", 2, "clients attacked by token recovery"),
            ("--inversion-steps", 100, "optimisation steps of the paper's embedding inversion"),
            ("--recovery-shadows", 12, "attacker's shadow clients for the prior + evidence token attack"),
            ("--eval-windows", 4, "perplexity windows for the defence curve")):
        b.add_argument(flag, type=int, metavar="N", default=default, help=f"{text} (default: {default})")
    b.add_argument("--canary-insertions", default="1,8", metavar="LIST",
                   help="how often the canary sentence is inserted into client 0's text (default: 1,8)")
    b.add_argument("--view-rr-eps", type=float, metavar="X", default=2.0,
                   help="epsilon per bit of the randomized-response view (default: 2.0)")
    b.add_argument("--view-skellam-lam", type=float, metavar="X", default=50.0,
                   help="Skellam lambda of the noisy-sum view (default: 50.0)")
    b.add_argument("--defence-rr-eps", default="2", metavar="LIST",
                   help="epsilon-per-bit values of the simulated utility curve (default: 2)")
    b.add_argument("--defence-skellam-lam", default="4,1e4", metavar="LIST",
                   help="Skellam lambda values of the simulated utility curve (default: 4,1e4)")
    b.add_argument("--delta", type=float, metavar="X", default=1e-5,
                   help="delta of every (epsilon, delta) (default: 1e-5)")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_audit)

    r = sub.add_parser("report", help="HTML + Markdown + JSON report of an audit folder",
                       description="Write report.html (figures embedded), report.md (+ figures/) and report.json "
                                   "(the data behind every figure and table) for a `secprune audit` folder.")
    r.add_argument("--audit", required=True, metavar="DIR", help="folder written by `secprune audit`")
    r.add_argument("--out", required=True, metavar="DIR", help="report folder")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier secprune report")
    r.add_argument("--show-reconstructions", action="store_true",
                   help="quote recovered and true private text (the audit must have --keep-reconstructions; the "
                        "report folder becomes owner-only)")
    r.add_argument("--quiet", action="store_true", help="print errors only")
    r.set_defaults(func=cmd_report)


def budget_from_args(args: argparse.Namespace):
    from secprune.attacks.canary import CanaryBudget
    from secprune.attacks.membership import MIABudget
    from secprune.attacks.one_run_game import OneRunBudget
    from secprune.audits.runner import AuditBudget

    for name in ("population", "entropy_draws", "mia_targets", "mia_shadows_in", "mia_shadows_out", "mia_eval_in",
                 "mia_eval_out", "one_run_canaries", "canary_secrets", "eval_windows",
                 "sensitivity_pairs", "full_depth_pairs", "inversion_clients", "inversion_steps", "recovery_shadows"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.mia_shadows_out < 2 or args.mia_eval_out < 1 or args.mia_eval_in < 1 or args.mia_targets < 1:
        raise UsageError("--mia-*: need at least 1 target, 2 out-shadows, 1 member and 1 non-member trial per target")
    if args.population < 4:
        raise UsageError(f"--population must be >= 4 (shadow and challenger pools), got {args.population}")
    if not 1 <= args.canary_digits <= 8:
        raise UsageError(f"--canary-digits must lie in 1..8, got {args.canary_digits}")
    insertions = [int(x) for x in _floats(args.canary_insertions)]
    if not insertions or min(insertions) < 1:
        raise UsageError(f"--canary-insertions: expected positive integers, got {args.canary_insertions!r}")
    if not 0 < args.delta < 1:
        raise UsageError(f"--delta must lie in (0, 1), got {args.delta}")
    if args.view_rr_eps <= 0 or args.view_skellam_lam <= 0:
        raise UsageError("--view-rr-eps and --view-skellam-lam must be > 0")
    mia = MIABudget(targets=args.mia_targets, shadows_in=args.mia_shadows_in, shadows_out=args.mia_shadows_out,
                    trials_in=args.mia_eval_in, trials_out=args.mia_eval_out,
                    rr_eps=args.view_rr_eps, skellam_lam=args.view_skellam_lam, seed=args.seed)
    one = OneRunBudget(canaries=args.one_run_canaries, skellam_lam=args.view_skellam_lam, rr_eps=args.view_rr_eps,
                       delta=args.delta, seed=args.seed)
    canary = CanaryBudget(length=args.canary_digits, secrets=max(args.canary_secrets, 1), insertions=insertions,
                          skellam_lam=args.view_skellam_lam, seed=args.seed)
    return AuditBudget(population=args.population, entropy_draws=max(args.entropy_draws, 2),
                       sensitivity_pairs=args.sensitivity_pairs, full_depth_pairs=args.full_depth_pairs, mia=mia,
                       one_run=one, canary=canary, inversion_clients=args.inversion_clients,
                       inversion_steps=args.inversion_steps, recovery_shadows=args.recovery_shadows,
                       rr_eps=_floats(args.defence_rr_eps), skellam_lam=_floats(args.defence_skellam_lam),
                       eval_windows=args.eval_windows, delta=args.delta, seed=args.seed)


def _prune_first(args: argparse.Namespace, out: Path) -> Path:
    """`audit` without --run: prune into <out>/run, reusing it when it was made with the same flags."""
    from secprune import summary
    from secprune.config import PruneConfig
    from secprune.run import run_prune

    run_dir = out / "run"
    cfg = PruneConfig(model=args.model, clients=args.clients, nsamples=args.nsamples, seqlen=args.seqlen,
                      method=args.method, calib=args.calib, sparsity=args.sparsity, seed=args.seed,
                      eval_windows=args.prune_eval_windows, eval_seqlen=args.seqlen, baselines=["dense"],
                      save_client_masks=True, out=str(run_dir), overwrite=True).validate()
    if (run_dir / "summary.json").is_file():
        try:
            if summary.load(run_dir)["config"] == cfg.to_dict():
                log.info(f"[audit] reusing the run in {run_dir} (same flags)")
                return run_dir
        except UsageError:
            pass
    log.info(f"[audit] pruning first: {run_dir}")
    run_prune(cfg, progress=not args.quiet)
    return run_dir


def cmd_audit(args: argparse.Namespace) -> int:
    import shutil

    from secprune.audits.runner import inputs_from_run, run_core, save_audit

    out = Path(args.out)
    outdir.check_target(out, overwrite=args.overwrite)
    if args.report:
        outdir.check_target(Path(args.report), overwrite=args.overwrite, flag="--report")
    if args.show_reconstructions and not args.report:
        raise UsageError("--show-reconstructions: only with --report (or `secprune report`)")
    if args.client_data and not args.run:
        raise UsageError("--client-data: only with --run (a run made here reads the public --calib corpus)")
    budget = budget_from_args(args)
    if args.run:
        run_dir = Path(args.run)
        if not (run_dir / "summary.json").is_file():  # never start a prune on a mistyped path
            raise UsageError(f"--run: {run_dir} is not a `secprune prune` output folder (no summary.json)")
        inputs = inputs_from_run(run_dir, budget, client_data=args.client_data)  # refusals before any output
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not outdir.is_ours(out):
        outdir.mark(out, "audit")
    for child in ("audit.json", "private"):  # results of an earlier audit in this (our own) folder
        target = out / child
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    keep = args.keep_reconstructions or args.show_reconstructions
    try:
        if not args.run:
            inputs = inputs_from_run(_prune_first(args, out), budget)
        result, private = run_core(inputs, budget, quiet=args.quiet)
        save_audit(out, result, private if keep else None)
    except BaseException:
        if created and not (out / "run").exists():  # a failed audit leaves nothing (a pruned run is kept)
            shutil.rmtree(out, ignore_errors=True)
        raise
    if keep:
        log.warn(f"--keep-reconstructions: recovered and true client tokens are kept in {out}/private/ "
                 "(owner-only); delete them when done")
    info = {"audit": str(out / "audit.json"), "summary": {k: v for k, v in result["summary"].items()
                                                         if k != "epsilon_statement"}}
    if args.report:
        from secprune.report import write_report

        info["report"] = write_report(out, Path(args.report), show_reconstructions=args.show_reconstructions,
                                      overwrite=args.overwrite)
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from secprune.report import write_report

    audit = Path(args.audit)
    if not (audit / "audit.json").is_file():
        raise UsageError(f"--audit: {audit} has no audit.json (run `secprune audit` first)")
    print(json.dumps(write_report(audit, Path(args.out), show_reconstructions=args.show_reconstructions,
                                  overwrite=args.overwrite), indent=1))
    return 0
