"""Reproduce FedPrLLM Appendix C on SmolLM2 and run the stronger attacks with a larger budget.

Usage:
    python -m secprune prune --save-client-masks --out runs/prune16 --baselines dense --eval-windows 4
    python experiments/privacy_appendix_c.py --run runs/prune16 --out runs/appc [--big]

Prints the paper's five Appendix C figures next to ours and writes the audit and its report. ``--big`` runs
8x more membership trials, 256 one-run canaries and 6-digit canary secrets (tens of minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secprune.attacks.canary import CanaryBudget
from secprune.attacks.membership import MIABudget
from secprune.attacks.one_run_game import OneRunBudget
from secprune.audits.runner import AuditBudget, inputs_from_run, run_core, save_audit
from secprune.report import write_report


def budget(big: bool, seed: int) -> AuditBudget:
    if not big:
        return AuditBudget(seed=seed)
    return AuditBudget(population=256, entropy_draws=48, sensitivity_pairs=48, full_depth_pairs=2,
                       mia=MIABudget(targets=16, shadows_in=24, shadows_out=96, trials_in=64, trials_out=64, seed=seed),
                       one_run=OneRunBudget(canaries=256, seed=seed),
                       canary=CanaryBudget(length=6, secrets=8, insertions=[1, 4, 16], seed=seed),
                       inversion_clients=4, inversion_steps=200, recovery_shadows=24, rr_eps=[0.5, 2.0, 8.0],
                       skellam_lam=[0.5, 8.0, 128.0, 1e4, 1e6], eval_windows=8, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--big", action="store_true", help="larger budgets (tens of minutes on 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    b = budget(args.big, args.seed)
    inp = inputs_from_run(Path(args.run), b)
    res, priv = run_core(inp, b)
    out = Path(args.out)
    save_audit(out, res, priv)
    write_report(out, out / "report")
    s = res["summary"]
    rows = [
        ("entropy: mask vs fp16 (bits)", "1.0 vs 13.75",
         f"{s['mask_entropy_bits']:.2f} vs {s['fp16_entropy_bits']:.2f}"),
        ("mask similarity (Hamming)", "4.96%", f"{100 * s['similarity_all_layers']:.2f}%"),
        ("sensitivity replace / remove", "4.96% / -",
         f"{100 * (s['sensitivity_replace_all_layers'] or float('nan')):.2f}% / "
         f"{100 * (s['sensitivity_remove_all_layers'] or float('nan')):.2f}%"),
        ("MIA signal remove-one / replace-one", "3.23%",
         f"{100 * s['mia_signal_remove_one']:.2f}% / {100 * s['mia_signal_replace_one']:.2f}%"),
        ("inversion token recovery (paper attack)", "< 2%", f"{100 * s['inversion']['paper_token_precision']:.2f}%"),
    ]
    for r in rows:
        print(f"{r[0]:<42} paper {r[1]:<14} ours {r[2]}")
    print(json.dumps({k: v for k, v in s.items() if k in ("mia", "one_run", "exposure", "inversion",
                                                           "max_eps_lower_bound")}, indent=1))


if __name__ == "__main__":
    main()
