"""How close the auditors come to a known guarantee: ``--dp statistics``' own release audited by independent
trials and by one run (``secprune.audits.statistic_audit``), for several epsilons.

Usage:
    python -m secprune.experiments.dp_statistics_audit [--epsilons 0.5 1 2 4 8] [--trials 4000] [--canaries 4000]

Prints a Markdown table (docs/privacy.md, "Auditing it").
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from secprune.audits.statistic_audit import one_run_audit, trial_audit

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    p.add_argument("--trials", type=int, default=4000, help="releases with the canary, and as many without")
    p.add_argument("--canaries", type=int, default=4000, help="canaries of the one-run audit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"| guarantee epsilon (delta 1e-5) | trials ({args.trials} + {args.trials}): epsilon >= | ceiling | "
          f"one run ({args.canaries} canaries): epsilon >= | ceiling |")
    print("| --- | --- | --- | --- | --- |")
    for eps in args.epsilons:
        t = trial_audit(epsilon=eps, trials=args.trials, seed=args.seed)
        o = one_run_audit(epsilon=eps, canaries=args.canaries, seed=args.seed)
        print(f"| {eps:g} | {t['eps_lower_bound']:.2f} | {t['max_attainable']:.2f} | {o['eps_lower_bound']:.2f} | "
              f"{o['max_attainable']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
