"""Report writer: ``report.html`` (plots embedded as base64 PNG data URIs), ``report.md`` (+ ``figures/*.png``)
and ``report.json`` (the data behind every figure and table). Every file is written atomically.

Reconstructed private text lives in the audit's ``private/reconstructions.json`` and is shown only when
``show_reconstructions`` is set; otherwise the report gives counts and scores and says it was redacted.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np

SECTIONS = [
    ("summary", "Summary"),
    ("entropy", "Entropy: capacity vs information revealed"),
    ("similarity", "Mask similarity"),
    ("sensitivity", "Sensitivity to one sample"),
    ("membership", "Membership inference"),
    ("inversion", "Token recovery (gradient inversion)"),
    ("views", "Views: own mask, secure-aggregation sum, noisy"),
    ("defence", "Defence: utility vs epsilon"),
    ("paper", "Paper (FedPrLLM App. C) vs this audit"),
    ("method", "Method and parameters"),
]
VIEW_LABEL = {"own": "own mask (no secure aggregation)", "sum": "vote sum (secure aggregation)",
              "rr": "own mask + randomized response", "noisy_sum": "vote sum + Skellam noise"}


def _atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _num(x, fmt="{:.3g}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "unbounded"
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return fmt.format(x)


# ---------------------------------------------------------------- figures
def _figures(a: dict) -> dict[str, tuple[bytes, dict, str]]:
    """name -> (png bytes, data, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, tuple[bytes, dict, str]] = {}

    def save(fig, name, data, caption):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        figs[name] = (buf.getvalue(), data, caption)

    res = a["membership"]["results"]
    for scale in ("linear", "loglog"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        data = {}
        for ax, attack in zip(axes, ("lira", "hamming"), strict=True):
            for v in VIEW_LABEL:
                r = res.get(f"{attack}/{v}")
                if r is None:
                    continue
                fpr, tpr = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
                data[f"{attack}/{v}"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": r["auc"]}
                if scale == "loglog":
                    fpr, tpr = np.clip(fpr, 1e-4, 1), np.clip(tpr, 1e-4, 1)
                ax.plot(fpr, tpr, label=f"{v} (AUC {r['auc']:.2f})")
            ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
            if scale == "loglog":
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title(f"{attack.upper() if attack == 'lira' else 'Hamming (paper)'} ROC, {scale}")
            ax.legend(fontsize=8)
        save(fig, f"roc_{scale}", data, f"Membership inference ROC ({scale} axes), layer-0 masks.")

    sim = a["similarity"]
    sens = a["sensitivity"]["layer0"]
    fig, ax = plt.subplots(figsize=(7, 4))
    hist = {"similarity_run_clients": sim["run_clients_all_layers"]["total"],
            "similarity_layer0_draws": sim["layer0_independent_draws"],
            **{f"sensitivity_layer0_{k}": v["hamming"] for k, v in sens.items()},
            "mia_signal": a["membership"]["signal_strength"]["hamming_with_vs_without"]}
    for name, vals in hist.items():
        if vals:
            ax.hist(100 * np.asarray(vals), bins=20, alpha=0.5, label=name)
    ax.axvline(4.96, color="k", ls="--", lw=1, label="paper 4.96%")
    ax.axvline(3.23, color="gray", ls=":", lw=1, label="paper 3.23%")
    ax.set_xlabel("Hamming distance (% of mask bits)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    save(fig, "hamming_histograms", hist, "Hamming distances: independent sets (similarity), neighbouring sets "
         "(sensitivity), with vs without a target (MIA signal).")

    full = a["sensitivity"]["all_layers"]
    per_layer_sim = sim["run_clients_all_layers"]["per_layer_mean"]
    fig, ax = plt.subplots(figsize=(7, 4))
    data = {"similarity_per_layer": per_layer_sim}
    xs = sorted(int(k) for k in per_layer_sim)
    ax.plot(xs, [100 * per_layer_sim[str(x)] for x in xs], "o-", label="independent clients (similarity)")
    for kind, v in full.items():
        pl = {int(k.split(".")[1]): val for k, val in v["per_layer"].items()}
        data[f"sensitivity_{kind}_per_layer"] = pl
        ax.plot(sorted(pl), [100 * pl[x] for x in sorted(pl)], "s-", label=f"one sample: {kind}")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("Hamming distance (%)")
    ax.legend(fontsize=8)
    save(fig, "per_layer_sensitivity", data, "Per-layer Hamming distance: independent clients vs neighbouring sets.")

    rows = a["defence"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    data = {"rows": rows}
    base = next((r["ppl"] for r in rows if r["mechanism"] == "none"), None)
    for ax, key, title in ((axes[0], "eps_worst", "accounted epsilon (worst-case sensitivity)"),
                           (axes[1], "eps_empirical_sensitivity", "heuristic epsilon (empirical sensitivity)")):
        for mech, marker in (("rr", "o-"), ("skellam", "s-")):
            pts = [(r[key], r["ppl"]) for r in rows if r["mechanism"] == mech and r["ppl"] is not None
                   and r[key] is not None and math.isfinite(r[key]) and r[key] > 0]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=mech)
        if base is not None:
            ax.axhline(base, color="k", ls="--", lw=1, label="no noise")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel("perplexity")
        ax.legend(fontsize=8)
    save(fig, "utility_vs_epsilon", data, "Perplexity of the final mask against epsilon (delta "
         f"{a['defence']['delta']:g}).")

    inv = a["inversion"]["summary"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = ["prior only", "paper inversion"] + [f"structured: {v}" for v in VIEW_LABEL]
    vals = [inv["prior_precision"], inv["paper_token_precision"]] + [inv[f"structured_{v}_precision"]
                                                                     for v in VIEW_LABEL]
    ax.barh(labels, [100 * (0 if v is None or math.isnan(v) else v) for v in vals])
    ax.set_xlabel("token precision at K = |client tokens| (%)")
    save(fig, "inversion", dict(zip(labels, vals, strict=True)),
         "Token recovery precision, averaged over audited clients.")
    return figs


# ---------------------------------------------------------------- content
def _tables(a: dict, private: dict | None) -> dict[str, list]:
    """Section id -> list of blocks: ("p", text) | ("table", header, rows) | ("fig", name)."""
    s = a["summary"]
    ent = a["entropy"]
    mem = a["membership"]
    st = a["setting"]
    b: dict[str, list] = {k: [] for k, _ in SECTIONS}
    b["summary"] += [
        ("p", "<strong>Epsilon.</strong> " + s["epsilon_statement"]),
        ("p", f"Largest empirical lower bound on epsilon from our attacks: <strong>{s['max_eps_lower_bound']:.2f}"
              "</strong> (Clopper-Pearson, alpha 0.05, delta 1e-5; limited by the number of trials, not by the "
              "mechanism)."),
        ("table", ["measure", "paper (LLaMA-7B)", "ours"], [
            ["mask entropy (bits/entry)", "1.0", _num(s["mask_entropy_bits"])],
            ["fp16 weight entropy of block-0 q_proj (bits)", "13.75", _num(s["fp16_entropy_bits"])],
            ["mask similarity (Hamming, independent sets)", "4.96%", _pct(s["similarity_all_layers"])],
            ["sensitivity, replace one sample", "4.96%", f"{_pct(s['sensitivity_replace_all_layers'])} (all layers), "
             f"{_pct(s['sensitivity_replace_layer0'])} (layer 0)"],
            ["sensitivity, remove one sample", "-", f"{_pct(s['sensitivity_remove_all_layers'])} (all layers), "
             f"{_pct(s['sensitivity_remove_layer0'])} (layer 0)"],
            ["MIA signal (with vs without target)", "3.23%", _pct(s["mia_signal_hamming"])],
            ["MIA AUC, LiRA on own mask", "not reported", _num(s["mia"]["lira/own"]["auc"])],
            ["MIA AUC, LiRA on secure-agg sum", "not reported", _num(s["mia"]["lira/sum"]["auc"])],
            ["token recovery, paper's inversion", "< 2%", _pct(s["inversion"]["paper_token_precision"])],
            ["token recovery, structured attack (own mask)", "-", _pct(s["inversion"]["structured_own_precision"])],
            ["claimed epsilon", "about 0.05", "unbounded without noise"],
        ]),
    ]
    acr = ent["across_draws_layer0"]
    b["entropy"] += [
        ("p", "Capacity: a mask bit at sparsity 50% carries at most H(0.5) = 1 bit; the fp16 weights of block 0's "
              "q_proj have the empirical entropy below."
              + (" The packaged SmolLM2 weights were 4-bit quantized, so their fp16 entropy is below LLaMA-7B's "
                 "13.75 bits." if "smollm2" in str(a.get("run", {}).get("model", "")) else "")
              + " Capacity is not leakage: what the mask reveals about the calibration data is "
              "I(mask; data) = H(mask)."),
        ("table", ["quantity", "value"], [
            ["mask bit entropy, block-0 q_proj (client 0)", _num(ent["mask_bit_entropy_q_proj"])],
            ["mask bit entropy, whole model (client 0)", _num(ent["mask_bit_entropy_all"])],
            ["fp16 entropy, block-0 q_proj (bits)", _num(ent["fp16_q_proj"]["bits"])],
            ["distinct fp16 values in block-0 q_proj", str(ent["fp16_q_proj"]["distinct_values"])],
            [f"layer-0 bits that flip across {acr['draws']} calibration draws", _pct(acr["fraction_flipping"])],
            ["sum of per-bit entropies, layer 0 (bits; upper bound on H(mask))",
             _num(acr["sum_bit_entropy_bits"], "{:.0f}")],
            ["distinct layer-0 masks / draws", f"{acr['distinct_masks']} / {acr['draws']}"],
        ]),
        ("table", ["layer-0 matrix", "flipping bits", "sum of bit entropies (bits)"],
         [[n, _pct(v["fraction_flipping"]), _num(v["sum_bit_entropy_bits"], "{:.0f}")]
          for n, v in acr["per_matrix"].items()]),
    ]
    sim = a["similarity"]
    b["similarity"] += [
        ("p", f"Hamming distance between the masks of the run's {st['clients']} clients (independent, disjoint "
              f"calibration windows, {st['windows_per_client']} windows of {st['seqlen']} tokens each): mean "
              f"{_pct(sim['run_clients_all_layers']['mean'])} over {sim['run_clients_all_layers']['pairs']} pairs "
              "(paper: 4.96%). Random masks at 50% sparsity would differ in 50%."),
        ("table", ["matrix type", "mean Hamming"],
         [[k, _pct(v)] for k, v in sim["run_clients_all_layers"]["per_matrix_type_mean"].items()]),
        ("fig", "hamming_histograms"),
    ]
    sens = a["sensitivity"]
    rows = []
    for kind, v in sens["layer0"].items():
        rows.append([f"layer 0, {kind}", str(len(v["hamming"])), _pct(v["mean"]), _pct(v["max"])])
    for kind, v in sens["all_layers"].items():
        rows.append([f"all layers, {kind}", str(len(v["total"])), _pct(float(np.mean(v["total"]))),
                     _pct(float(np.max(v["total"])))])
    rows.append(["magnitude pruning (data-free), layer 0", "1", _pct(sens["magnitude_baseline_layer0"]),
                 _pct(sens["magnitude_baseline_layer0"])])
    b["sensitivity"] += [
        ("p", "Neighbouring calibration sets differ in one window (replace it with a fresh one, or remove it). "
              "A small Hamming distance is not a privacy guarantee: a deterministic mask that moves at all with "
              "the data makes the two neighbours perfectly distinguishable."),
        ("table", ["neighbours", "pairs", "mean Hamming", "max Hamming"], rows),
        ("fig", "per_layer_sensitivity"),
    ]
    res = mem["results"]
    mb = mem["budget"]
    trows = []
    for key, r in res.items():
        e = r["empirical_epsilon"]
        trows.append([key, str(r["members"]), str(r["non_members"]), _num(r["auc"]), _pct(r["tpr_at_1pct_fpr"]),
                      _pct(r["tpr_at_0.1pct_fpr"]), _num(r["balanced_accuracy"]), _num(e["eps_lower_bound"])])
    b["membership"] += [
        ("p", f"Target windows: {mb['targets']}; the client holds {mb['client_size']} windows; shadow sets: "
              f"{mb['shadows_in']} with and {mb['shadows_out']} without each target (attacker's half of the "
              f"population); evaluation: {mb['eval_in']} member trials per target and {mb['eval_out']} non-member "
              "masks (challenger's half), each non-member mask scored against every target model. Layer-0 masks "
              f"only ({mem['bits']} bits), so deeper layers could only add signal. TPR at 0.1% FPR needs at least "
              "1000 non-member trials to be resolved."),
        ("table", ["attack/view", "members", "non-members", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "bal. acc.",
                   "eps lower bound"], trows),
        ("fig", "roc_linear"), ("fig", "roc_loglog"),
        ("p", "Empirical epsilon: threshold chosen on a random half of the trials (maximizing the point estimate), "
              "Clopper-Pearson upper bounds on FPR and FNR at alpha = 0.05 on the other half, delta = 1e-5; "
              "eps_lb = max(log((1-delta-FNR_ub)/FPR_ub), log((1-delta-FPR_ub)/FNR_ub)) "
              "(Jagielski et al. 2020; Nasr et al. 2021)."),
    ]
    inv = a["inversion"]
    irows = []
    for c in inv["clients"]:
        for v in VIEW_LABEL:
            r = c["structured"][v]
            irows.append([str(c["client"]), f"structured / {v}", str(r["k"]), _pct(r["precision"]),
                          _num(r.get("rare_recall"))])
        irows.append([str(c["client"]), "prior only (public frequencies)", str(c["prior_baseline"]["k"]),
                      _pct(c["prior_baseline"]["precision"]), _num(c["prior_baseline"].get("rare_recall"))])
        p = c["paper_embedding_inversion"]
        irows.append([str(c["client"]), "paper's embedding inversion", str(p["positions"]),
                      _pct(p["token_precision"]), "-"])
    b["inversion"] += [
        ("p", "The paper's attack optimises input embeddings so that a differentiable surrogate of the Wanda mask "
              "matches the target, then reads tokens by nearest embedding. The structured attack fits the column "
              "norms ||X_j|| that the row-wise orderings of |W_ij| ||X_j|| imply (logistic model), then solves a "
              "non-negative least-squares problem for the token histogram (at layer 0, ||X_j||^2 is linear in the "
              f"token counts). Candidates: {inv['candidates']} tokens seen in the public corpus. Precision at K = the "
              f"number of distinct tokens of the client; rare = {inv['rare_definition']}."),
        ("table", ["client", "attack / view", "K", "precision", "rare-token recall"], irows),
        ("fig", "inversion"),
    ]
    if private is None:
        b["inversion"].append(("p", "<em>Reconstructed and original text redacted. Re-run the report with "
                                    "--show-reconstructions to include them.</em>"))
    else:
        for c in private.get("clients", []):
            t = c.get("text")
            if t:
                b["inversion"].append(("pre", f"client {c['client']}\noriginal (first 64 tokens): "
                                              f"{t['true_first_window']}\npaper inversion: "
                                              f"{t['paper_reconstruction']}\nstructured top tokens (own mask): "
                                              f"{' | '.join(t['structured_top_own'])}\nstructured top tokens (sum): "
                                              f"{' | '.join(t['structured_top_sum'])}"))
    vrows = []
    for v, label in VIEW_LABEL.items():
        lo, ha = res.get(f"lira/{v}"), res.get(f"hamming/{v}")
        vrows.append([label, _num(lo["auc"]) if lo else "n/a", _num(ha["auc"]) if ha else "n/a",
                      _pct(inv["summary"][f"structured_{v}_precision"])])
    noise = inv["views_noise"]
    b["views"] += [
        ("p", f"Noisy views: randomized response with eps_bit = {noise['rr_eps']:g} per bit; Skellam noise with "
              f"lam = {noise['skellam_lam']:g} (variance {2 * noise['skellam_lam']:g}) on every vote count. "
              "With secure aggregation the server sees the sum over all clients; the structured attack then "
              "estimates the union histogram, and its precision on one client's tokens drops."),
        ("table", ["view", "LiRA AUC", "Hamming AUC", "structured token precision"], vrows),
    ]
    if inv["clients"] and "structured_sum_vs_union" in inv["clients"][0]:
        u = np.mean([c["structured_sum_vs_union"]["precision"] for c in inv["clients"]])
        b["views"].append(("p", f"On the sum, the structured attack's precision against the union of all "
                                f"clients' tokens is {_pct(float(u))}."))
    d = a["defence"]
    drows = [[r["mechanism"], _num(r["param"]), _num(r["ppl"]), _num(r["eps_worst"]),
              _num(r["eps_empirical_sensitivity"])] for r in d["rows"]]
    b["defence"] += [
        ("p", f"Perplexity on {d['eval_windows']} evaluation windows of the final mask when the server only sees "
              f"noisy counts. {d['sensitivity_note']} Worst-case h = {d['h_worst']} bits; empirical h = "
              f"{d['h_empirical']} bits. {d['rr_note']}; {d['strategy_note']}."),
        ("table", ["mechanism", "parameter", "perplexity", "epsilon (accounted)", "epsilon (heuristic)"], drows),
        ("fig", "utility_vs_epsilon"),
    ]
    s_inv = s["inversion"]
    info_bits = _num(s["information_bits_layer0"], "{:.0f}")
    b["paper"] += [
        ("table", ["Appendix C figure", "paper", "ours", "what our stronger attacks find"], [
            ["entropy (mask vs fp16 bits)", "1.0 vs 13.75",
             f"{_num(s['mask_entropy_bits'])} vs {_num(s['fp16_entropy_bits'])}",
             f"layer-0 masks carry up to {info_bits} bits across draws"],
            ["mask similarity", "4.96%", _pct(s["similarity_all_layers"]), "-"],
            ["sensitivity (one sample)", "4.96%", _pct(s["sensitivity_replace_all_layers"]),
             "any change at all means unbounded epsilon without noise"],
            ["membership inference signal", "3.23%", _pct(s["mia_signal_hamming"]),
             f"LiRA AUC {_num(s['mia']['lira/own']['auc'])} (own), {_num(s['mia']['lira/sum']['auc'])} (sum)"],
            ["gradient inversion", "< 2% tokens", _pct(s_inv["paper_token_precision"]),
             f"structured: {_pct(s_inv['structured_own_precision'])} precision vs "
             f"{_pct(s_inv['prior_precision'])} prior-only"],
        ]),
        ("p", f"Paper numbers are for LLaMA-7B; ours for {a['run'].get('model', 'the audited model')}."),
    ]
    run = a.get("run", {})
    b["method"] += [
        ("table", ["parameter", "value"], [[k, html.escape(str(v))] for k, v in {**st, **{
            f"run.{k}": v for k, v in run.items() if k != "run_perplexity"}}.items()]),
        ("table", ["budget", "value"], [[k, html.escape(json.dumps(v))] for k, v in a["budget"].items()]),
        ("table", ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in a.get("timings", {}).items()]),
        ("p", "Shadow-set attacks, the information estimate and the layer-0 sensitivity use exact layer-0 masks "
              "(additive Wanda statistics); all-layer numbers come from the run's own client masks and from full "
              "one-shot recomputation of a few neighbouring sets."),
    ]
    return b


def write_report(audit_dir: Path, out_dir: Path, *, show_reconstructions: bool = False,
                 overwrite: bool = False) -> dict:
    """Write the report into a fresh folder (renamed over ``out_dir`` at the end). With
    ``show_reconstructions`` the report quotes private text, so its folder is the owner's alone."""
    from secprune import log, outdir
    from secprune.model import UsageError

    audit_dir, out_dir = Path(audit_dir), Path(out_dir)
    a = json.loads((audit_dir / "audit.json").read_text())
    private = None
    if show_reconstructions:
        p = audit_dir / "private" / "reconstructions.json"
        if not p.is_file():
            raise UsageError(f"--show-reconstructions: {audit_dir} kept no reconstructions; rerun `secprune audit` "
                             "with --keep-reconstructions")
        private = json.loads(p.read_text())
    outdir.check_target(out_dir, overwrite=overwrite)
    figs = _figures(a)
    blocks = _tables(a, private)
    title = "secprune privacy audit"

    # HTML
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:left;font-size:90%}img{max-width:100%}pre{background:#f4f4f4;padding:8px;"
             "white-space:pre-wrap}</style></head><body>", f"<h1>{title}</h1><nav><ul>"]
    parts += [f"<li><a href='#{sid}'>{html.escape(t)}</a></li>" for sid, t in SECTIONS]
    parts.append("</ul></nav>")
    md = [f"# {title}\n"]
    for sid, t in SECTIONS:
        parts.append(f"<section id='{sid}'><h2>{html.escape(t)}</h2>")
        md.append(f"\n## {t}\n")
        for blk in blocks[sid]:
            kind = blk[0]
            if kind == "p":
                parts.append(f"<p>{blk[1]}</p>")
                md.append(_strip_tags(blk[1]) + "\n")
            elif kind == "pre":
                parts.append(f"<pre>{html.escape(blk[1])}</pre>")
                md.append("```\n" + blk[1] + "\n```\n")
            elif kind == "table":
                head, rows = blk[1], blk[2]
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                             + "</table>")
                md.append("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
                          + "".join("| " + " | ".join(_strip_tags(str(c)) for c in r) + " |\n" for r in rows))
            elif kind == "fig":
                png, _, cap = figs[blk[1]]
                b64 = base64.b64encode(png).decode()
                parts.append(f"<figure><img id='fig-{blk[1]}' alt='{html.escape(cap)}' "
                             f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(cap)}</figcaption></figure>")
                md.append(f"![{cap}](figures/{blk[1]}.png)\n")
        parts.append("</section>")
    parts.append("</body></html>")

    final_dir, out_dir = out_dir, outdir.staging(out_dir, kind="report")
    for name, (png, _, _) in figs.items():
        _atomic_write(out_dir / "figures" / f"{name}.png", png)
    _atomic_write(out_dir / "report.html", "".join(parts))
    _atomic_write(out_dir / "report.md", "\n".join(md))
    report_json = {"summary": a["summary"], "paper": a["paper"], "sections": [s for s, _ in SECTIONS],
                   "figures": {name: {"caption": cap, "data": data} for name, (_, data, cap) in figs.items()},
                   "tables": {sid: [blk[1:] for blk in bl if blk[0] == "table"] for sid, bl in blocks.items()},
                   "reconstructions_shown": show_reconstructions}
    _atomic_write(out_dir / "report.json", json.dumps(report_json, indent=1, default=_default))
    if show_reconstructions:  # the report quotes the clients' text: owner-only
        for f in [out_dir, *out_dir.rglob("*")]:
            if f.is_dir():
                outdir.private_dir(f)
            else:
                outdir.make_private(f)
        log.warn(f"--show-reconstructions: {final_dir} quotes the clients' private text (owner-only folder); "
                 "do not share it")
    outdir.commit(out_dir, final_dir)
    return {"html": str(final_dir / "report.html"), "markdown": str(final_dir / "report.md"),
            "json": str(final_dir / "report.json"), "figures": sorted(figs)}


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _strip_tags(s: str) -> str:
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", s))
