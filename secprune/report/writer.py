"""Report writer: ``report.html`` (plots embedded as base64 PNG data URIs), ``report.md`` (+ ``figures/*.png``)
and ``report.json`` (the data behind every figure and table). Every file is written atomically.

Every sentence is generated from the numbers it states (no fixed claims): comparisons are phrased from
the values and their confidence intervals, and a figure that its trial count cannot resolve says so.
Reconstructed private text lives in the audit's ``private/reconstructions.json`` and is shown only when
``show_reconstructions`` is set; otherwise the report gives counts and scores and says it was redacted.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from secprune.outdir import atomic_write

SECTIONS = [
    ("summary", "Summary"),
    ("entropy", "Entropy: capacity vs information revealed"),
    ("similarity", "Mask similarity"),
    ("sensitivity", "Sensitivity to one sample"),
    ("membership", "Membership inference (independent trials)"),
    ("one_run", "One-run audit (Steinke, Nasr & Jagielski 2023)"),
    ("exposure", "Canary exposure (Secret Sharer)"),
    ("inversion", "Token recovery"),
    ("views", "Views: own mask, secure sum, noisy sum, final mask"),
    ("defence", "Defence: utility vs epsilon"),
    ("paper", "Paper (FedPrLLM App. C) vs this audit"),
    ("method", "Method and parameters"),
]
VIEW_LABEL = {"own": "own mask (no secure aggregation)", "sum": "vote sum (secure aggregation)",
              "noisy_sum": "vote sum + Skellam noise (distributed DP)", "final": "final mask only (secure top-k)",
              "rr": "own mask + randomized response"}
CORE_VIEWS = ("own", "sum", "noisy_sum", "final")


def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x, digits: int = 1) -> str:
    return "n/a" if _bad(x) else f"{100 * x:.{digits}f}%"


def _num(x, fmt="{:.3g}") -> str:
    if _bad(x):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "unbounded"
    return fmt.format(x)


def _ci(v, ci, fmt="{:.2f}") -> str:
    if _bad(v):
        return "n/a"
    if not ci or _bad(ci[0]) or _bad(ci[1]):
        return fmt.format(v)
    return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _eps(r: dict, unit: str = "trials") -> str:
    """An epsilon bound with the ceiling its trial (or canary) count allows."""
    return f"{r['eps_lower_bound']:.2f} (at most {r['max_attainable']:.2f} with these {unit})"


def _tpr(low: dict) -> str:
    if low.get("resolved"):
        return f"{_pct(low['tpr'])} [{_pct(low['tpr_ci'][0])}, {_pct(low['tpr_ci'][1])}]"
    return f"not resolved (needs >= {low['non_members_needed']} non-members)"


def _compare(a: float, a_ci, b: float, b_ci, *, what: str, name_a: str, name_b: str) -> str:
    """A sentence comparing two estimates from their values and 95% intervals (or bare values)."""
    if _bad(a) or _bad(b):
        return f"{what}: {name_a} {_num(a)}, {name_b} {_num(b)}."
    if a_ci is None or b_ci is None:  # lower bounds without an interval: compare the values
        if abs(a - b) < 5e-3:
            return f"{what}: {a:.2f} for the {name_a} and for the {name_b}."
        return f"{what}: {a:.2f} for the {name_a}, {'lower' if a < b else 'higher'} than {b:.2f} for the {name_b}."
    if not (_bad(a_ci[0]) or _bad(b_ci[0])) and (a_ci[1] < b_ci[0] or b_ci[1] < a_ci[0]):
        verb = "lower" if a < b else "higher"
        return (f"{what} is {verb} for the {name_a} ({_ci(a, a_ci)}) than for the {name_b} ({_ci(b, b_ci)}); the 95% "
                "intervals do not overlap.")
    return (f"{what}: {name_a} {_ci(a, a_ci)}, {name_b} {_ci(b, b_ci)}; the 95% intervals overlap, so these trials do "
            "not tell them apart.")


def _secure_topk_verdict(res: dict, one: dict) -> str:
    """Whether hiding the vote counts (final mask only) helps, from the membership and one-run numbers."""
    fs, ff = res["lira/sum"], res["lira/final"]
    es, ef = fs["empirical_epsilon"]["eps_lower_bound"], ff["empirical_epsilon"]["eps_lower_bound"]
    os_, of = one["sum"]["eps_lower_bound"], one["final"]["eps_lower_bound"]
    lo_f = min(ff["per_target_auc"])
    separated = ff["auc_ci"][1] < fs["auc_ci"][0]
    if separated or (ef < 0.5 * es and of < 0.5 * os_):
        return (f"Hiding the vote counts lowers what these attacks find (trial bound {ef:.2f} vs {es:.2f}, one-run "
                f"{of:.2f} vs {os_:.2f}), but the final mask alone still certifies epsilon >= {max(ef, of):.2f}.")
    return (f"The final mask alone leaks about as much here: every target's AUC on it is at least {lo_f:.3f}, the "
            f"trial bound is {ef:.2f} (sum {es:.2f}) and the one-run bound {of:.2f} (sum {os_:.2f}). A secure top-k "
            "that hides the vote counts would not, by itself, protect membership.")


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
    n_in = next(iter(res.values()))["members"]
    n_out = next(iter(res.values()))["non_members"]
    for scale in ("linear", "loglog"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        data = {}
        for ax, attack in zip(axes, ("lira", "hamming"), strict=True):
            for v in VIEW_LABEL:
                r = res.get(f"{attack}/{v}")
                if r is None:
                    continue
                fpr, tpr = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
                data[f"{attack}/{v}"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": r["auc"],
                                         "auc_ci": r["auc_ci"]}
                if scale == "loglog":
                    fpr, tpr = np.clip(fpr, 1e-4, 1), np.clip(tpr, 1e-4, 1)
                ax.plot(fpr, tpr, label=f"{v} (AUC {_ci(r['auc'], r['auc_ci'])})")
            if scale == "loglog":
                floor = 1.0 / max(n_out, 1)
                ax.axvspan(1e-4, floor, color="0.9", label=f"FPR < 1/{n_out}: not resolved")
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title(f"{'LiRA' if attack == 'lira' else 'Hamming (paper)'} ROC, {scale}, normalised pooled")
            ax.legend(fontsize=7)
        save(fig, f"roc_{scale}", data,
             f"Membership inference ROC ({scale} axes), scores normalised per target and pooled: {n_in} member and "
             f"{n_out} non-member trials, one fresh mask each; AUC with its 95% DeLong interval"
             + (f"; FPRs below 1/{n_out} cannot be resolved (shaded)." if scale == "loglog" else "."))

    fig, ax = plt.subplots(figsize=(9, 4))
    data = {}
    for i, v in enumerate(VIEW_LABEL):
        r = res.get(f"lira/{v}")
        if r is None:
            continue
        aucs, cis = np.array(r["per_target_auc"]), np.array(r["per_target_auc_ci"])
        x = np.arange(len(aucs)) + i * 0.12
        ax.errorbar(x, aucs, yerr=[aucs - cis[:, 0], cis[:, 1] - aucs], fmt="o", ms=3, capsize=2, label=v)
        data[v] = {"auc": aucs.tolist(), "ci": cis.tolist()}
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set_xlabel("target (run window of a different client)")
    ax.set_ylabel("LiRA AUC")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=5)
    save(fig, "per_target_auc", data, "LiRA AUC per target with 95% intervals (per-target trials only; DeLong, or the "
                                      "exact bound under perfect separation).")

    one = a["one_run"]["results"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    vs = [v for v in VIEW_LABEL if v in one]
    ax.bar(vs, [one[v]["max_attainable"] for v in vs], color="0.85", label="ceiling of this canary budget")
    ax.bar(vs, [one[v]["eps_lower_bound"] for v in vs], color="C0", label="certified lower bound (95%)")
    ax.set_ylabel("epsilon lower bound")
    ax.legend(fontsize=8)
    save(fig, "one_run", {v: {k: one[v][k] for k in ("eps_lower_bound", "max_attainable")} for v in vs},
         f"One-run epsilon lower bounds (95% confidence, Bonferroni over the guess grid) from "
             f"{a['one_run']['canaries']} "
         "canaries, next to what perfect guessing could certify with them.")

    ex = a.get("exposure", {})
    if ex.get("summary"):
        fig, ax = plt.subplots(figsize=(9, 4))
        data = {}
        ins_list = list(ex["summary"])
        width = 0.8 / max(len(ins_list), 1)
        for j, ins in enumerate(ins_list):
            d = ex["summary"][ins]
            keys = [f"{adv}/{v}" for adv in ("informed", "prior") for v in CORE_VIEWS]
            means = [d[k]["mean"] for k in keys]
            lo = [d[k]["mean"] - d[k]["ci"][0] if not _bad(d[k]["ci"][0]) else 0 for k in keys]
            hi = [d[k]["ci"][1] - d[k]["mean"] if not _bad(d[k]["ci"][1]) else 0 for k in keys]
            x = np.arange(len(keys)) + j * width
            ax.bar(x, means, width, yerr=[lo, hi], capsize=2, label=f"{ins} insertion(s)")
            data[ins] = {k: d[k] for k in keys} | {"max_exposure_mean": d["max_exposure_mean"]}
            ax.axhline(d["max_exposure_mean"], color=f"C{j}", ls="--", lw=0.8)
        ax.axhline(ex["chance_uniform_rank"], color="k", ls=":", lw=0.8, label="chance")
        ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
        ax.set_xticklabels([k.replace("/", "\n") for k in keys], fontsize=7)
        ax.set_ylabel("exposure (bits)")
        ax.legend(fontsize=7)
        save(fig, "exposure", data, f"Canary exposure (mean over secrets, 95% t-interval) of a "
            f"{int(round(ex['space_bits'] / math.log2(10)))}-digit "
             "secret; dashed: the maximum a multiset-level attack can reach; dotted: chance.")

    sim = a["similarity"]
    sens = a["sensitivity"]["layer0"]
    fig, ax = plt.subplots(figsize=(7, 4))
    sig = a["membership"]["signal_strength"]
    hist = {"similarity_run_clients": sim["run_clients_all_layers"]["total"],
            "similarity_layer0_draws": sim["layer0_independent_draws"],
            **{f"sensitivity_layer0_{k}": v["hamming"] for k, v in sens.items()},
            "signal_remove_one": sig.get("remove_one", []), "signal_replace_one": sig.get("replace_one", [])}
    for name, vals in hist.items():
        if vals:
            ax.hist(100 * np.asarray(vals), bins=20, alpha=0.5, label=f"{name} (n={len(vals)})")
    ax.axvline(4.96, color="k", ls="--", lw=1, label="paper 4.96%")
    ax.axvline(3.23, color="gray", ls=":", lw=1, label="paper 3.23%")
    ax.set_xlabel("Hamming distance (% of mask bits)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    save(fig, "hamming_histograms", hist, "Hamming distances (distributions; n pairs each): independent sets "
         "(similarity), neighbouring sets (sensitivity), with vs without a target (remove-one and replace-one).")

    full = a["sensitivity"]["all_layers"]
    per_layer_sim = sim["run_clients_all_layers"]["per_layer_mean"]
    fig, ax = plt.subplots(figsize=(7, 4))
    data = {"similarity_per_layer": per_layer_sim}
    xs = sorted(int(k) for k in per_layer_sim)
    ax.plot(xs, [100 * per_layer_sim[str(x)] for x in xs], "o-",
            label=f"independent clients ({sim['run_clients_all_layers']['pairs']} pairs)")
    for kind, v in full.items():
        pl = {int(k.split(".")[1]): val for k, val in v["per_layer"].items()}
        data[f"sensitivity_{kind}_per_layer"] = pl
        ax.plot(sorted(pl), [100 * pl[x] for x in sorted(pl)], "s-", label=f"one sample: {kind} "
            f"({len(v['total'])} pair)")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("Hamming distance (%)")
    ax.legend(fontsize=8)
    save(fig, "per_layer_sensitivity", data, "Per-layer Hamming distance: independent clients vs neighbouring sets "
         "(descriptive; the pair counts are in the legend).")

    rows = a["defence"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    data = {"rows": rows}
    base = next((r["ppl"] for r in rows if r["mechanism"] == "none"), None)
    for ax, key, title in ((axes[0], "eps_worst", "accounted epsilon (worst-case sensitivity)"),
                           (axes[1], "eps_empirical_sensitivity", "heuristic epsilon (empirical sensitivity)")):
        for mech, marker in (("rr", "o"), ("skellam", "s")):
            pts = [(r[key], r["ppl"]) for r in rows if r["mechanism"] == mech and r["ppl"] is not None
                   and r[key] is not None and math.isfinite(r[key]) and r[key] > 0]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker + "-", label=mech)
        if base is not None:
            ax.axhline(base, color="k", ls="--", lw=1, label="no noise (epsilon unbounded)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel("perplexity")
        ax.legend(fontsize=8)
    save(fig, "utility_vs_epsilon", data, f"Perplexity ({a['defence']['eval_windows']} windows, one noise draw "
         f"each) of the final mask against epsilon (delta {a['defence']['delta']:g}).")

    inv = a["inversion"]["summary"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    attacks = [(att, v) for att in ("structured", "combined") for v in VIEW_LABEL if f"{att}_{v}_precision" in inv]
    labels = ["public-frequency prior", "uniform chance"] + [f"{att}: {v}" for att, v in attacks]
    vals = [inv["prior_precision"], inv["chance_precision"]] + [inv[f"{att}_{v}_precision"] for att, v in attacks]
    cis = [_pooled_ci(a, x) for x in (["baselines", "prior_precision"], None)] + \
        [_pooled_ci(a, [att, v, "precision"]) for att, v in attacks]
    err_lo = [100 * (v - c[0]) if c and not _bad(v) else 0 for v, c in zip(vals, cis, strict=True)]
    err_hi = [100 * (c[1] - v) if c and not _bad(v) else 0 for v, c in zip(vals, cis, strict=True)]
    ax.barh(labels, [100 * (0 if _bad(v) else v) for v in vals], xerr=[err_lo, err_hi], capsize=2)
    ax.axvline(100 * inv["best_data_free_precision"], color="k", ls="--", lw=1, label="best data-free baseline")
    ax.set_xlabel("token precision at K = |client tokens| (%)")
    ax.legend(fontsize=7)
    save(fig, "inversion", dict(zip(labels, vals, strict=True)),
         "Token recovery precision at equal K, mean over audited clients, with 95% Clopper-Pearson intervals on the "
         "pooled hits (the uniform-chance bar is an expectation, no interval).")
    return figs


def _pooled_ci(a: dict, path: list | None) -> list | None:
    """Clopper-Pearson interval of the pooled hits / K over the audited clients for a precision at K."""
    from secprune.audits.epsilon import clopper_pearson

    if path is None:
        return None
    hits = n = 0
    for c in a["inversion"]["clients"]:
        x = c
        for p in path[:-1]:
            x = x.get(p, {}) if isinstance(x, dict) else {}
        if not isinstance(x, dict) or path[-1] not in x:
            return None
        k = x.get("k", c["distinct_tokens"])
        hits += int(round(x[path[-1]] * k))
        n += k
    return list(clopper_pearson(hits, n)) if n else None


# ---------------------------------------------------------------- content
def _statement(a: dict) -> str:
    s = a["summary"]
    mia = s["mia"]
    best_key = max(mia, key=lambda k: mia[k]["eps_lower_bound"])
    b = mia[best_key]
    one = s["one_run"]
    best_one = max(one, key=lambda v: one[v]["eps_lower_bound"])
    method = a["setting"]["method"]
    text = ("Without added noise the shared mask is a deterministic function of the private calibration data, so "
            "no finite epsilon holds unless the mask does not depend on the data at all. ")
    if b["eps_lower_bound"] > 0 or one[best_one]["eps_lower_bound"] > 0:
        text += (f"Our attacks certify epsilon >= {b['eps_lower_bound']:.2f} from independent membership trials "
                 f"({best_key}; a perfect attack could certify at most {b['eps_max_attainable']:.2f} with these "
                     f"trials) "
                 f"and epsilon >= {one[best_one]['eps_lower_bound']:.2f} from one run with canaries ({best_one} view; "
                 f"ceiling {one[best_one]['max_attainable']:.2f}), each at 95% confidence. ")
    else:
        text += "No attack here certified a positive lower bound at 95% confidence. "
    text += f"The paper's 'epsilon about {a['paper']['claimed_epsilon']}' is not a differential-privacy guarantee."
    if method == "magnitude":
        text += (" This run used magnitude pruning, whose masks do not depend on the data: a positive bound here is "
                 "noise in the trials.")
    else:  # a bound at its ceiling is limited by the budget of trials; one below it is what the attack reached
        at_ceiling = [name for name, lb, cap in ((best_key, b["eps_lower_bound"], b["eps_max_attainable"]),
                                                 (best_one, one[best_one]["eps_lower_bound"],
                                                  one[best_one]["max_attainable"])) if cap - lb < 0.01]
        if at_ceiling:
            text += (f" The bound of the {' and the '.join(at_ceiling)} view sits at its ceiling: it is limited by the "
                     "number of trials, and more trials would certify more.")
        else:
            text += " Both bounds are below their ceilings: they are what these attacks reached with this budget."
    return text


def _tables(a: dict, private: dict | None) -> dict[str, list]:
    """Section id -> list of blocks: ("p", text) | ("table", header, rows) | ("fig", name) | ("pre", text)."""
    s = a["summary"]
    ent = a["entropy"]
    mem = a["membership"]
    st = a["setting"]
    res = mem["results"]
    b: dict[str, list] = {k: [] for k, _ in SECTIONS}
    inv = a["inversion"]
    isum = inv["summary"]
    ex = a.get("exposure", {})
    one = a["one_run"]
    acr = ent["across_draws_layer0"]
    de = ent.get("data_entropy", {})

    # ---- summary
    mrows = []
    for v in VIEW_LABEL:
        r = res.get(f"lira/{v}")
        o = one["results"].get(v)
        if r is None:
            continue
        mrows.append([VIEW_LABEL[v], _ci(r["auc"], r["auc_ci"]),
                      f"{min(r['per_target_auc']):.3f}-{max(r['per_target_auc']):.3f}", _eps(r["empirical_epsilon"]),
                      _eps(o, "canaries") if o else "n/a"])
    b["summary"] += [("p", "<strong>Epsilon.</strong> " + html.escape(_statement(a))),
                     ("table", ["view", "LiRA AUC [95% CI]", "per-target AUC range", "epsilon >= (trials)",
                                "epsilon >= (one run)"], mrows)]
    if ex.get("summary"):
        last = list(ex["summary"])[-1]
        d = ex["summary"][last]
        b["summary"].append(("p", html.escape(
            f"Canary exposure ({last} insertion(s), {int(round(ex['space_bits'] / math.log2(10)))}-digit secret, "
            f"|R| = 2^{ex['space_bits']:.1f}): an adversary who knows every other token reaches "
            f"{_ci(d['informed/own']['mean'], d['informed/own']['ci'], '{:.1f}')} bits from the own mask and "
            f"{_ci(d['informed/final']['mean'], d['informed/final']['ci'], '{:.1f}')} from the final mask (maximum "
            f"{d['max_exposure_mean']:.1f}); one who knows only public text reaches "
            f"{_ci(d['prior/own']['mean'], d['prior/own']['ci'], '{:.1f}')} bits from the own mask and "
            f"{_ci(d['prior/sum']['mean'], d['prior/sum']['ci'], '{:.1f}')} from the sum (chance "
            f"{ex['chance_uniform_rank']:.2f}).")))
    best = isum["best_attack"]
    if best["lift"] > 1:
        key = f"{best['attack']}_{best['view']}_precision"
        tr = (f"Token recovery: the best attack ({best['attack']}, {best['view']} view) recovers "
              f"{_pct(isum[key])} of K tokens against "
              f"{_pct(isum['best_data_free_precision'])} for the best data-free baseline (lift {best['lift']:.2f}).")
    else:
        tr = (f"Token recovery: no attack beats the best data-free baseline ({_pct(isum['best_data_free_precision'])} "
              f"at equal K; best attack lift {best['lift']:.2f}).")
    b["summary"].append(("p", html.escape(tr)))

    # ---- entropy
    data_bits = de.get("bits")
    b["entropy"] += [
        ("p", html.escape(
            f"Capacity: a mask bit at sparsity {st['sparsity']:g} carries at most "
            f"{s['mask_entropy_bits']:.3f} bits; the fp16 weights of block 0's q_proj have "
                f"{s['fp16_entropy_bits']:.2f} "
            f"bits of empirical entropy (paper: {a['paper']['fp16_entropy_bits']} on LLaMA-7B). Capacity is not "
            "leakage: what the mask reveals about the data is I(mask; data) = H(mask) <= H(data).")),
        ("p", html.escape(
            f"H(data): a client's {st['windows_per_client']} windows start at random offsets of a "
            f"{de.get('stream_tokens', 0):,}-token stream, so H(data) <= {_num(data_bits, '{:.1f}')} bits, and so is "
            f"H(mask). The plug-in sum of per-bit entropies from {acr['draws']} draws is "
            f"{acr['sum_bit_entropy_bits']:,.0f} bits: an estimate from few draws, not a bound on H(mask). Every one "
            f"of the {acr['draws']} draws gave {'its own' if acr['distinct_masks'] == acr['draws'] else 'a'} mask "
            f"({acr['distinct_masks']} distinct), so the layer-0 mask identifies its calibration set among them.")),
        ("table", ["quantity", "value"], [
            ["mask bit entropy, block-0 q_proj (client 0)", _num(ent["mask_bit_entropy_q_proj"])],
            ["mask bit entropy, whole model (client 0)", _num(ent["mask_bit_entropy_all"])],
            ["fp16 entropy, block-0 q_proj (bits)", _num(ent["fp16_q_proj"]["bits"])],
            ["distinct fp16 values in block-0 q_proj", str(ent["fp16_q_proj"]["distinct_values"])],
            [f"layer-0 bits that flip across {acr['draws']} draws", _pct(acr["fraction_flipping"], 2)],
            [f"plug-in sum of per-bit entropies, layer 0 ({acr['draws']} "
                f"draws)", f"{acr['sum_bit_entropy_bits']:,.0f}"],
            ["upper bound on H(data) (hence on H(mask)), bits", _num(data_bits, "{:.1f}")],
            ["distinct layer-0 masks / draws", f"{acr['distinct_masks']} / {acr['draws']}"],
        ]),
    ]

    # ---- similarity
    sim = a["similarity"]["run_clients_all_layers"]
    tot = np.asarray(sim["total"])
    b["similarity"] += [
        ("p", html.escape(
            f"Hamming distance between the masks of the run's {st['clients']} clients (disjoint windows, "
            f"{st['windows_per_client']} windows of {st['seqlen']} tokens each): mean {_pct(sim['mean'], 2)} over "
            f"{sim['pairs']} pairs (range {_pct(float(tot.min()), 2)}-{_pct(float(tot.max()), 2)}; paper: "
            f"{_pct(a['paper']['similarity_hamming'], 2)}).")),
        ("table", ["matrix type", "mean Hamming"], [[k, _pct(v, 2)] for k, v in sim["per_matrix_type_mean"].items()]),
        ("fig", "hamming_histograms"),
    ]

    # ---- sensitivity
    sens = a["sensitivity"]
    rows = [[f"layer 0, {kind}", str(len(v["hamming"])), _pct(v["mean"], 2), _pct(v["max"], 2)]
            for kind, v in sens["layer0"].items()]
    rows += [[f"all layers, {kind}", str(len(v["total"])), _pct(float(np.mean(v["total"])), 2),
              _pct(float(np.max(v["total"])), 2)] for kind, v in sens["all_layers"].items()]
    rows.append(["magnitude pruning (data-free), layer 0", "1", _pct(sens["magnitude_baseline_layer0"], 2),
                 _pct(sens["magnitude_baseline_layer0"], 2)])
    moved = any(v["max"] > 0 for v in sens["layer0"].values())
    b["sensitivity"] += [
        ("p", html.escape(
            "Neighbouring calibration sets differ in one window (replaced by a fresh one, or removed). "
            + ("The mask moved for the neighbours measured here, so a deterministic release tells them apart with "
               "certainty; its size is not a privacy parameter." if moved else
               "The mask did not move for any neighbour measured here."))),
        ("table", ["neighbours", "pairs", "mean Hamming", "max Hamming"], rows),
        ("fig", "per_layer_sensitivity"),
    ]

    # ---- membership
    mb = mem["budget"]
    trows = []
    for key, r in res.items():
        e = r["empirical_epsilon"]
        trows.append([key, str(r["members"]), str(r["non_members"]), _ci(r["auc"], r["auc_ci"]),
                      _num(r["pooled_raw_auc"], "{:.2f}"),
                      f"{min(r['per_target_auc']):.3f}-{max(r['per_target_auc']):.3f}",
                      _tpr(r["low_fpr"]["1pct"]), _tpr(r["low_fpr"]["0.1pct"]), _eps(e)])
    sig = mem["signal_strength"]
    b["membership"] += [
        ("p", html.escape(
            f"{len(mem['targets'])} targets, each a window of a different client of the run. Per trial a fresh "
            f"calibration set for that client ({mb['client_size']} windows: the target plus pool windows, or pool "
            f"windows only) gives one fresh mask, noise draw and final mask; the other {mb['n_clients'] - 1} clients "
            f"keep their real masks. {mb['trials_in']} member and {mb['trials_out']} non-member trials per target; "
            f"shadow sets: {mb['shadows_in']} with and {mb['shadows_out']} without each target from the attacker's "
            f"pool ({st['attacker_pool']} windows), trials from the challenger's pool ({st['challenger_pool']}), "
            "both disjoint from every run window and from each other. The trials are split in halves within every "
            "target; each target's scores are standardised by its non-member scores in the selection half, where "
            "the threshold is chosen as well; pooled AUC, ROC and epsilon come from the other half ('members' and "
            "'non-members' count those trials). 'Raw pooled' mixes the targets' unnormalised scales; per-target "
            f"AUCs use all of a target's trials. Layer-0 masks only ({mem['bits']:,} bits).")),
        ("table", ["attack/view", "members", "non-members", "AUC [95% CI]", "raw pooled AUC", "per-target AUC",
                   "TPR@1%FPR", "TPR@0.1%FPR", "epsilon >="], trows),
        ("fig", "roc_linear"), ("fig", "roc_loglog"), ("fig", "per_target_auc"),
        ("p", html.escape(
            "Epsilon lower bound: the trials are split at random into halves; the threshold ('member if score > t', "
            "t a midpoint between consecutive scores) maximizes the Clopper-Pearson bound on the first half and the "
            "bound eps = max(log((1-delta-FNR_ub)/FPR_ub), log((1-delta-FPR_ub)/FNR_ub)) (alpha 0.05, delta 1e-5) is "
            "computed once on the second (Jagielski et al. 2020; Nasr et al. 2021).")),
        ("p", html.escape(
            f"The paper's 'MIA signal': Hamming distance between the layer-0 masks with and without the target "
            f"({len(sig.get('remove_one', []))} pairs): remove-one {_pct(sig.get('remove_one_mean'), 2)}, "
            f"replace-one {_pct(sig.get('replace_one_mean'), 2)} (paper: "
                f"{_pct(a['paper']['mia_signal_hamming'], 2)}).")),
    ]

    # ---- one run
    orows = [[VIEW_LABEL[v], _ci(r["auc"], r["auc_ci"]), str(r["best"]["k_plus"]), str(r["best"]["k_minus"]),
              f"{r['best']['correct']}/{r['best']['guesses']}", _eps(r, "canaries")] for v, r in one["results"].items()]
    ob = one["budget"]
    one_text = " ".join([
        f"One run of the {one['clients']} real clients with {one['canaries']} canary windows (public, disjoint from "
        f"the run's), each assigned to a random client and included with probability 1/2 ({sum(one['included'])} "
        "included).",
        f"The auditor is {one['adversary']}; it scores each canary by the agreement of the view with the exact mask "
        f"change that canary would cause (on average {one['support_mean']:,.0f} entries),",
        "guesses 'in' for the k+ highest and 'out' for the k- lowest scores, and converts the correct guesses into a "
        f"lower bound with Theorem 5.2 of Steinke et al. (delta {ob['delta']:g}, 95% confidence, Bonferroni over the "
        "grid of guess counts)."])
    b["one_run"] += [
        ("p", html.escape(one_text)),
        ("table", ["view", "AUC of canary scores [95% CI]", "k+", "k-", "correct/guesses", "epsilon >="], orows),
        ("fig", "one_run"),
    ]

    # ---- exposure
    if ex.get("summary"):
        erows = []
        for ins, d in ex["summary"].items():
            for adv in ("informed", "prior"):
                erows.append([ins, adv] + [_ci(d[f"{adv}/{v}"]["mean"], d[f"{adv}/{v}"]["ci"], "{:.1f}")
                                           for v in CORE_VIEWS] + [f"{d['max_exposure_mean']:.1f}"])
        digits = int(round(ex["space_bits"] / math.log2(10)))
        b["exposure"] += [
            ("p", html.escape(
                f"A canary '{ex['budget']['template'].format('#' * digits)}' with a random {digits}-digit secret "
                f"(|R| = 10^{digits}, {ex['space_bits']:.1f} bits) replaces the first tokens of client "
                f"{ex.get('client', 0)}'s windows, inserted 1 or more times; every candidate secret is ranked by how "
                "well it explains the view; exposure = log2|R| - log2(rank) (Carlini et al. 2019). Layer-0 q/k/v "
                "statistics are sums over tokens, so each candidate's exact mask is computed without running the "
                "model; all permutations of the secret's digits give the same statistic, so they tie and the "
                "'max' column is the most such an attack can reach. Informed: knows every other token of every client "
                "(the DP adversary). Prior: knows only public text, the template and the insertion count. "
                f"Chance: {ex['chance_uniform_rank']:.2f} bits (uniform rank); all candidates tied: "
                    f"{ex['all_tied']:.2f}. "
                f"Mean over {ex['budget']['secrets']} secrets with 95% t-intervals.")),
            ("table", ["insertions", "adversary"] + [VIEW_LABEL[v] for v in CORE_VIEWS] + ["max"], erows),
            ("fig", "exposure"),
        ]
    else:
        b["exposure"].append(("p", html.escape(f"Not run: {ex.get('skipped', 'no data')}.")))

    # ---- token recovery
    irows = []
    for c in inv["clients"]:
        base = c["baselines"]
        irows.append([str(c["client"]), "public-frequency prior (data-free)", str(base["k"]),
                      _pct(base["prior_precision"]), "-"])
        irows.append([str(c["client"]), "uniform chance (data-free, expected)", str(base["k"]),
                      _pct(base["chance_precision"]), "-"])
        for att in ("structured", "combined"):
            for v in [v for v in VIEW_LABEL if v in c[att]]:
                r = c[att][v]
                irows.append([str(c["client"]), f"{att} / {v}", str(r["k"]), _pct(r["precision"]), f"{r['lift']:.2f}"])
        p = c["paper_embedding_inversion"]
        irows.append([str(c["client"]), "paper's embedding inversion (distinct tokens)", str(p["distinct_tokens"]),
                      _pct(p["distinct_precision"]), f"{p['lift']:.2f}"])
    pl = isum["paper_lift"]
    b["inversion"] += [
        ("p", html.escape(
            "Every attack is compared with the best data-free baseline at the same K (K = the client's distinct "
            "tokens; for the paper's attack, its distinct output tokens): the K most frequent public tokens (the "
            "frequency prior is computed without the run's windows), or K tokens at random. Lift = precision / best "
            "baseline; lift <= 1 means the mask added nothing an attacker without it could not guess. "
            "'structured': column norms fitted to the mask, then a non-negative histogram; 'combined': public "
            "presence prior + the mask's per-token evidence (Rao score), weight fitted on "
            f"{inv['shadow_clients']} shadow clients of the attacker's pool. Candidates: {inv['candidates']:,} "
                f"tokens.")),
        ("p", html.escape(
            f"The paper's embedding inversion: {_pct(isum['paper_token_precision'], 2)} of positions hit a client "
            f"token, against {_pct(isum['paper_per_position_chance'], 2)} for a uniformly random token; over its "
            f"distinct tokens {_pct(isum['paper_distinct_precision'])} against {_pct(isum['paper_distinct_baseline'])} "
            f"for the best data-free baseline (lift {_num(pl, '{:.2f}')}).")),
        ("table", ["client", "attack / view", "K", "precision", "lift"], irows),
        ("fig", "inversion"),
    ]
    best = isum["best_attack"]
    if best["lift"] > 1:
        b["inversion"].append(("p", html.escape(
            f"Best: {best['attack']} on the {best['view']} view, lift {best['lift']:.2f} over the best data-free "
            "baseline (mean over the audited clients).")))
    else:
        b["inversion"].append(("p", html.escape(
            f"No attack beats the best data-free baseline here (best lift {best['lift']:.2f}): from these masks an "
            "attacker recovers no more tokens than it could guess without them.")))
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
                                              f"{' | '.join(t['structured_top_sum'])}\ncombined top tokens (own): "
                                              f"{' | '.join(t.get('combined_top_own', []))}"))

    # ---- views
    vrows = []
    for v, label in VIEW_LABEL.items():
        lo = res.get(f"lira/{v}")
        o = one["results"].get(v)
        exp = ex.get("summary", {}).get(list(ex.get("summary", {"": 0}))[-1], {}) if ex.get("summary") else {}
        e_inf = exp.get(f"informed/{v}", {}).get("mean") if exp else None
        e_pri = exp.get(f"prior/{v}", {}).get("mean") if exp else None
        vrows.append([label, _ci(lo["auc"], lo["auc_ci"]) if lo else "n/a",
                      f"{lo['empirical_epsilon']['eps_lower_bound']:.2f}" if lo else "n/a",
                      f"{o['eps_lower_bound']:.2f}" if o else "n/a", _num(e_inf, "{:.1f}"), _num(e_pri, "{:.1f}"),
                      _pct(isum.get(f"combined_{v}_precision")), _num(isum.get(f"combined_{v}_lift"), "{:.2f}")])
    noise = inv["views_noise"]
    fs, ff = res["lira/sum"], res["lira/final"]
    b["views"] += [
        ("p", html.escape(
            f"Noisy views: Skellam noise with lam = {noise['skellam_lam']:g} (variance "
                f"{2 * noise['skellam_lam']:g}) on "
            f"every vote count; randomized response with eps_bit = {noise['rr_eps']:g}. The final-mask view is what a "
            "secure top-k would reveal and what every user of the pruned model sees.")),
        ("table", ["view", "LiRA AUC [95% CI]", "epsilon >= (trials)", "epsilon >= (one run)",
                   "exposure, informed", "exposure, public prior", "token precision (combined)", "lift"], vrows),
        ("p", html.escape(_compare(ff["auc"], ff["auc_ci"], fs["auc"], fs["auc_ci"], what="Membership AUC",
                                   name_a="final mask", name_b="vote sum")
                          + " " + _compare(one["results"]["final"]["eps_lower_bound"], None,
                                           one["results"]["sum"]["eps_lower_bound"], None,
                                           what="One-run epsilon lower bound", name_a="final mask",
                                           name_b="vote sum")
                          + " " + _secure_topk_verdict(res, one["results"]))),
    ]
    if inv["clients"] and "structured_sum_vs_union" in inv["clients"][0]:
        u = np.mean([c["structured_sum_vs_union"]["precision"] for c in inv["clients"]])
        b["views"].append(("p", html.escape(
            f"On the sum, the structured attack's precision against the union of all clients' tokens is "
                f"{_pct(float(u))}"
            f", against one client's tokens {_pct(isum['structured_sum_precision'])}; on the own mask "
            f"{_pct(isum['structured_own_precision'])}.")))

    # ---- defence
    d = a["defence"]
    drows = [[r["mechanism"], _num(r["param"]), _num(r["ppl"]), _num(r["eps_worst"]),
              _num(r["eps_empirical_sensitivity"])] for r in d["rows"]]
    none = next((r["ppl"] for r in d["rows"] if r["mechanism"] == "none"), None)
    worst = [r for r in d["rows"] if r["mechanism"] != "none" and r["ppl"] is not None]
    sent = ""
    if worst and none:
        best_eps = min(worst, key=lambda r: r["eps_worst"])
        sent = (f" The smallest accounted epsilon here, {_num(best_eps['eps_worst'])} ({best_eps['mechanism']} "
                f"{_num(best_eps['param'])}), comes with perplexity {_num(best_eps['ppl'])} against {_num(none)} "
                "without noise.")
    b["defence"] += [
        ("p", html.escape(
            f"Perplexity on {d['eval_windows']} evaluation windows of the final mask when the server only sees noisy "
            f"counts. {d['sensitivity_note']} Worst-case h = {d['h_worst']:,} bits; empirical h = {d['h_empirical']:,} "
            f"bits. {d['rr_note']}. {d.get('skellam_note', '')}; {d['strategy_note']}.{sent} The same noise inside the "
            "real pipeline: `secprune prune --secure-agg pairwise --dp-noise skellam --dp-lambda LAMBDA` "
            "(experiments/dp_utility_curve.py).")),
        ("table", ["mechanism", "parameter", "perplexity", "epsilon (accounted)", "epsilon (heuristic)"], drows),
        ("fig", "utility_vs_epsilon"),
    ]

    # ---- paper comparison
    best_mia = max(s["mia"].items(), key=lambda kv: kv[1]["eps_lower_bound"])
    b["paper"] += [
        ("table", ["Appendix C figure", "paper", "ours", "what the stronger audits find"], [
            ["entropy (mask vs fp16 bits)", "1.0 vs 13.75", f"{_num(s['mask_entropy_bits'])} vs "
             f"{_num(s['fp16_entropy_bits'])}", f"H(mask) <= H(data) <= {_num(s['data_entropy_bound_bits'], '{:.1f}')} "
             "bits; every draw gives its own mask"],
            ["mask similarity", "4.96%", _pct(s["similarity_all_layers"], 2), "-"],
            ["sensitivity (one sample)", "4.96%", _pct(s["sensitivity_replace_all_layers"], 2),
             "any change at all means unbounded epsilon without noise"],
            ["membership inference signal", "3.23%", f"remove-one {_pct(s['mia_signal_remove_one'], 2)}, replace-one "
             f"{_pct(s['mia_signal_replace_one'], 2)}", f"LiRA AUC "
                 f"{_ci(s['mia']['lira/own']['auc'], s['mia']['lira/own']['auc_ci'])} "
             f"(own), {_ci(s['mia']['lira/sum']['auc'], s['mia']['lira/sum']['auc_ci'])} (sum); epsilon >= "
             f"{best_mia[1]['eps_lower_bound']:.2f} ({best_mia[0]})"],
            ["gradient inversion", "< 2% tokens", f"{_pct(isum['paper_token_precision'], 2)} (chance "
             f"{_pct(isum['paper_per_position_chance'], 2)})",
             f"best attack lift {isum['best_attack']['lift']:.2f} over the data-free baseline"],
            ["claimed epsilon", "about 0.05", "unbounded without noise", f"lower bound {s['max_eps_lower_bound']:.2f}"],
        ]),
        ("p", html.escape(f"Paper numbers are for LLaMA-7B; ours for {a['run'].get('model', 'the audited model')}.")),
    ]

    # ---- method
    run = a.get("run", {})
    pop = a.get("population", {})
    b["method"] += [
        ("table", ["parameter", "value"], [[k, html.escape(str(v))] for k, v in {**st, **{
            f"run.{k}": v for k, v in run.items() if k != "run_perplexity"}}.items()]),
        ("table", ["budget", "value"], [[k, html.escape(json.dumps(v))] for k, v in a["budget"].items()]),
        ("table", ["population", "value"], [[k, html.escape(json.dumps(v))] for k, v in pop.items()]),
        ("table", ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in a.get("timings", {}).items()]),
        ("p", "Shadow-set attacks, one-run auditing, exposure and the layer-0 sensitivity use exact layer-0 masks "
              "(additive Wanda statistics); all-layer numbers come from the run's own client masks and from full "
              "one-shot recomputation of a few neighbouring sets."),
    ]
    return b


def write_report(audit_dir: Path, out_dir: Path, *, show_reconstructions: bool = False,
                 overwrite: bool = False) -> dict:
    """Write the report into a fresh folder (renamed over ``out_dir`` at the end). With
    ``show_reconstructions`` the report quotes private text, so its folder is the owner's alone."""
    from secprune import log, outdir
    from secprune.errors import UsageError

    audit_dir, out_dir = Path(audit_dir), Path(out_dir)
    a = json.loads((audit_dir / "audit.json").read_text())
    if "one_run" not in a or "per_target_auc" not in next(iter(a["membership"]["results"].values())):
        raise UsageError(f"--audit: {audit_dir}/audit.json was written by an older secprune; rerun `secprune audit`")
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
                if blk[1] not in figs:
                    continue
                png, _, cap = figs[blk[1]]
                b64 = base64.b64encode(png).decode()
                parts.append(f"<figure><img id='fig-{blk[1]}' alt='{html.escape(cap)}' "
                             f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(cap)}</figcaption></figure>")
                md.append(f"![{cap}](figures/{blk[1]}.png)\n")
        parts.append("</section>")
    parts.append("</body></html>")

    final_dir, out_dir = out_dir, outdir.staging(out_dir, kind="report")
    # quoting the clients' text, the folder and every file in it are the owner's alone from the first byte
    private = outdir.owner_only() if show_reconstructions else contextlib.nullcontext()
    with private:
        if show_reconstructions:
            outdir.private_dir(out_dir)
        for name, (png, _, _) in figs.items():
            atomic_write(out_dir / "figures" / f"{name}.png", png)
        atomic_write(out_dir / "report.html", "".join(parts))
        atomic_write(out_dir / "report.md", "\n".join(md))
        report_json = {"summary": a["summary"], "statement": _statement(a), "paper": a["paper"],
                       "sections": [s for s, _ in SECTIONS],
                       "figures": {name: {"caption": cap, "data": data} for name, (_, data, cap) in figs.items()},
                       "tables": {sid: [blk[1:] for blk in bl if blk[0] == "table"] for sid, bl in blocks.items()},
                       "text": {sid: [_strip_tags(blk[1]) for blk in bl if blk[0] == "p"]
                                for sid, bl in blocks.items()},
                       "reconstructions_shown": show_reconstructions}
        atomic_write(out_dir / "report.json", json.dumps(report_json, indent=1, default=_default))
    if show_reconstructions:
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
