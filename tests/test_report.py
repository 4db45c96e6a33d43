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
    from secprune.attacks.membership import MIABudget
    from secprune.audits.runner import AuditBudget, run_core, save_audit
    from secprune.audits.synthetic import synthetic_inputs

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inp = synthetic_inputs(population=24)
        b = AuditBudget(population=24, entropy_draws=4, sensitivity_pairs=3, full_depth_pairs=1,
                        mia=MIABudget(targets=2, shadows_in=4, shadows_out=8, eval_in=4, eval_out=8),
                        inversion_clients=1, inversion_steps=5, inversion_positions=8, rr_eps=[1.0],
                        skellam_lam=[4.0], eval_windows=1)
        res, priv = run_core(inp, b, quiet=True)
    finally:
        torch.set_num_threads(n)
    d = tmp_path_factory.mktemp("audit")
    save_audit(d, res, priv)
    return d


def test_audit_json_has_every_part(audit_dir):
    a = json.loads((audit_dir / "audit.json").read_text())
    for key in ("entropy", "similarity", "sensitivity", "membership", "inversion", "defence", "summary", "paper"):
        assert key in a
    assert "unbounded" in a["summary"]["epsilon_statement"]
    assert set(a["membership"]["results"]) == {f"{x}/{v}" for x in ("lira", "hamming")
                                               for v in ("own", "sum", "rr", "noisy_sum")}
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
    assert html.count("data:image/png;base64,") == 6
    rep = json.loads(Path(out["json"]).read_text())
    assert set(rep["figures"]) == {"roc_linear", "roc_loglog", "hamming_histograms", "per_layer_sensitivity",
                                   "utility_vs_epsilon", "inversion"}
    assert rep["figures"]["roc_linear"]["data"]["lira/own"]["fpr"][0] == 0.0
    for name in rep["figures"]:
        assert (tmp_path / "r" / "figures" / f"{name}.png").stat().st_size > 1000
    assert "redacted" in html and "<200>" not in html and "&lt;200&gt;" not in html
    assert not list((tmp_path / "r").glob("*.tmp*")) and not list((tmp_path / "r").glob(".*tmp*"))
    shown = write_report(audit_dir, tmp_path / "s", show_reconstructions=True)
    assert "&lt;200&gt;" in Path(shown["html"]).read_text()


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
    assert f'data-probe="6/6 {len(SECTIONS)}"' in dom
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--screenshot={shot}", "--window-size=1200,2000", Path(out["html"]).as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
