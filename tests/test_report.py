"""Reports: every section, every figure, redaction, atomic files, the CLI, and rendering in headless Chromium."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from secprune.report import SECTIONS, write_report


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    from secprune.attacks.canary import CanaryBudget
    from secprune.attacks.membership import MIABudget
    from secprune.attacks.one_run_game import OneRunBudget
    from secprune.audits.runner import AuditBudget, run_core, save_audit
    from secprune.audits.synthetic import synthetic_inputs

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inp = synthetic_inputs(population=24)
        b = AuditBudget(population=24, entropy_draws=4, sensitivity_pairs=3, full_depth_pairs=1,
                        mia=MIABudget(targets=2, shadows_in=4, shadows_out=8, trials_in=6, trials_out=6),
                        one_run=OneRunBudget(canaries=16), canary=CanaryBudget(length=3, secrets=2, insertions=[1, 2]),
                        inversion_clients=1, inversion_steps=5, inversion_positions=8, recovery_shadows=3,
                        rr_eps=[1.0], skellam_lam=[4.0], eval_windows=1)
        res, priv = run_core(inp, b, quiet=True)
    finally:
        torch.set_num_threads(n)
    d = tmp_path_factory.mktemp("audit")
    save_audit(d, res, priv)
    return d


FIGURES = {"roc_linear", "roc_loglog", "per_target_auc", "one_run", "exposure", "hamming_histograms",
           "per_layer_sensitivity", "utility_vs_epsilon", "inversion"}


def test_audit_json_has_every_part(audit_dir):
    a = json.loads((audit_dir / "audit.json").read_text())
    for key in ("entropy", "similarity", "sensitivity", "membership", "one_run", "exposure", "inversion", "defence",
                "summary", "paper", "population"):
        assert key in a
    assert set(a["membership"]["results"]) == {f"lira/{v}" for v in ("own", "sum", "noisy_sum", "final", "rr")} | {
        "hamming/own", "hamming/sum"}
    assert set(a["one_run"]["results"]) == {"own", "sum", "noisy_sum", "final", "rr"}
    assert (audit_dir / "private" / "reconstructions.json").is_file()
    # the audit never writes private text into audit.json
    assert "<200>" not in (audit_dir / "audit.json").read_text()


def test_report_sections_figures_and_redaction(audit_dir, tmp_path):
    out = write_report(audit_dir, tmp_path / "r")
    html = Path(out["html"]).read_text()
    md = Path(out["markdown"]).read_text()
    for sid, title in SECTIONS:
        assert f"id='{sid}'" in html
        assert f"## {title}" in md
    assert html.count("data:image/png;base64,") == len(FIGURES)
    rep = json.loads(Path(out["json"]).read_text())
    assert set(rep["figures"]) == FIGURES
    assert rep["figures"]["roc_linear"]["data"]["lira/own"]["fpr"][0] == 0.0
    for name in rep["figures"]:
        assert (tmp_path / "r" / "figures" / f"{name}.png").stat().st_size > 1000
    assert "redacted" in html and "<200>" not in html and "&lt;200&gt;" not in html
    assert not list((tmp_path / "r").glob("*.tmp*")) and not list((tmp_path / "r").glob(".*tmp*"))
    shown = write_report(audit_dir, tmp_path / "s", show_reconstructions=True)
    assert "&lt;200&gt;" in Path(shown["html"]).read_text()


def _rewrite(audit_dir, tmp_path, name, edit):
    a = json.loads((audit_dir / "audit.json").read_text())
    edit(a)
    d = tmp_path / name
    d.mkdir()
    (d / "audit.json").write_text(json.dumps(a))
    rep = json.loads(Path(write_report(d, tmp_path / f"{name}-r")["json"]).read_text())
    return " ".join(" ".join(v) for v in rep["text"].values()), rep


def test_report_sentences_follow_the_numbers(audit_dir, tmp_path):
    def final_lower(a):
        a["membership"]["results"]["lira/final"].update(auc=0.55, auc_ci=[0.5, 0.6])
        a["membership"]["results"]["lira/sum"].update(auc=0.95, auc_ci=[0.9, 0.99])
        a["inversion"]["summary"]["best_attack"] = {"attack": "combined", "view": "own", "lift": 0.97}

    def final_same(a):
        a["membership"]["results"]["lira/final"].update(auc=0.93, auc_ci=[0.85, 0.97])
        a["membership"]["results"]["lira/sum"].update(auc=0.95, auc_ci=[0.9, 0.99])
        a["inversion"]["summary"]["best_attack"] = {"attack": "combined", "view": "own", "lift": 1.2}
        a["inversion"]["summary"]["combined_own_precision"] = 0.42

    lower, _ = _rewrite(audit_dir, tmp_path, "lower", final_lower)
    same, rep = _rewrite(audit_dir, tmp_path, "same", final_same)
    assert "is lower for the final mask (0.55 [0.50, 0.60]) than for the vote sum (0.95 [0.90, 0.99])" in lower
    assert "no attack beats the best data-free baseline" in lower.lower()
    assert "final mask 0.93 [0.85, 0.97], vote sum 0.95 [0.90, 0.99]; the 95% intervals overlap" in same
    assert "lift 1.20" in same and "42.0%" in same
    # the epsilon statement quotes the bound and its ceiling from audit.json
    s = rep["summary"]
    best = max(s["mia"].values(), key=lambda r: r["eps_lower_bound"])
    assert f"epsilon >= {best['eps_lower_bound']:.2f}" in rep["statement"] or best["eps_lower_bound"] == 0
    assert f"at most {best['eps_max_attainable']:.2f}" in rep["statement"] or best["eps_lower_bound"] == 0


def test_cli_report_and_usage_errors(audit_dir, tmp_path, capsys):
    from secprune.cli import main

    assert main(["report", "--audit", str(audit_dir), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "report.html").is_file()
    assert main(["report", "--audit", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["audit", "--run", str(tmp_path), "--out", str(tmp_path / "a"), "--mia-targets", "0"]) == 2
    assert main(["audit", "--run", str(tmp_path), "--out", str(tmp_path / "a"), "--defence-rr-eps", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("secprune: error:") == 3


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(audit_dir, tmp_path):
    out = write_report(audit_dir, tmp_path / "r")
    page = tmp_path / "probe.html"
    probe = ("<script>window.addEventListener('load',()=>{const ok=[...document.images].filter("
             "i=>i.complete&&i.naturalWidth>0).length;const secs=[...document.querySelectorAll('section h2')]"
             ".filter(h=>h.getBoundingClientRect().height>0).length;document.body.setAttribute('data-probe',"
             "ok+'/'+document.images.length+' '+secs);});</script></body>")
    page.write_text(Path(out["html"]).read_text().replace("</body>", probe))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert f'data-probe="{len(FIGURES)}/{len(FIGURES)} {len(SECTIONS)}"' in dom
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--screenshot={shot}", "--window-size=1200,2000", Path(out["html"]).as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.parametrize("method, lb, cap, needle", [
    ("wanda", 3.24, 3.24, "sits at its ceiling: it is limited by the number of trials"),
    ("wanda", 2.31, 3.24, "Both bounds are below their ceilings"),
    ("magnitude", 0.4, 3.24, "a positive bound here is noise in the trials"),
])
def test_the_statement_says_trials_limit_a_bound_only_at_its_ceiling(method, lb, cap, needle):
    from secprune.report.writer import _statement

    a = {"setting": {"method": method}, "paper": {"claimed_epsilon": 0.05},
         "summary": {"mia": {"sum": {"eps_lower_bound": lb, "eps_max_attainable": cap}},
                     "one_run": {"sum": {"eps_lower_bound": lb * 0.5, "max_attainable": 2.56}}}}
    text = _statement(a)
    assert needle in text
    assert "not by the mechanism" not in text
