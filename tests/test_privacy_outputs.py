"""Private by default: no client's text or token ids in any file a run writes, in the cache, or in the logs.

The scanner looks for every 12-token run of each client's token stream (as int64/int32/int16/uint8 arrays,
and as JSON lists) and every 12-character run of its text. A positive control (``--keep-calibration``)
shows the scanner finds the sequences when they are there.
"""

import json
import os
import stat

import numpy as np
import pytest

from secprune.cli import main

from .conftest import CLIENT_TEXTS, char_tokenizer
from .test_cli import SMALL

AUDIT_BUDGET = ["--population", "8", "--entropy-draws", "2", "--sensitivity-pairs", "2", "--full-depth-pairs", "1",
                "--mia-targets", "1", "--mia-shadows-in", "2", "--mia-shadows-out", "2", "--mia-eval-in", "1",
                "--mia-eval-out", "2", "--inversion-clients", "1", "--inversion-steps", "2", "--eval-windows", "1"]


def needles(run: int = 12) -> list[bytes]:
    tok = char_tokenizer()
    out = set()
    for text in CLIENT_TEXTS:
        ids = np.array(tok(text, add_special_tokens=False).input_ids)
        for s in range(0, len(ids) - run, 3):
            seq = ids[s:s + run]
            for dt in ("<i8", "<i4", "<i2", "u1"):
                out.add(seq.astype(dt).tobytes())
            out.add(json.dumps(seq.tolist()).encode())  # "[1, 2, ...]"
            out.add(json.dumps(seq.tolist(), separators=(",", ":")).encode())
        raw = text.encode()
        for s in range(0, len(raw) - run, 3):
            out.add(raw[s:s + run])
    return sorted(out)


def leaks(root, patterns: list[bytes]) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(n in data for n in patterns):
            found.append(str(path.relative_to(root)))
    return found


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # shared by this module's runs (public corpora tokenized once)


@pytest.fixture
def cache(cache_dir, monkeypatch):
    monkeypatch.setenv("SECPRUNE_CACHE", str(cache_dir))
    return cache_dir


def test_no_client_data_in_outputs_cache_or_logs(tiny_folder, client_files, tmp_path, cache, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    patterns = needles()
    # prune (with the client masks the audit needs), audit, report, export: every output a user gets
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", "run",
                 "--save-client-masks"]) == 0
    # the summary keeps no paths of the clients' files: the audit is given them again
    assert main(["audit", "--run", "run", "--out", "audit", "--report", "report", *AUDIT_BUDGET]) == 2
    assert "--client-data: the run calibrated on 2 clients' own files" in capfd.readouterr().err
    assert not (tmp_path / "audit").exists()  # refused before any output
    assert main(["audit", "--run", "run", "--client-data", *client_files, "--out", "audit", "--report", "report",
                 *AUDIT_BUDGET]) == 0
    assert main(["export", "--run", "run", "--out", "model"]) == 0
    logs = capfd.readouterr()
    assert not any(n in (logs.out + logs.err).encode() for n in patterns)
    for folder in ("run", "audit", "report", "model"):
        assert leaks(tmp_path / folder, patterns) == [], folder
    assert not (tmp_path / "run.partial").exists()  # checkpoints (activations) are gone after success
    assert not (tmp_path / "audit" / "private").exists()  # no reconstructions unless asked
    assert cache.is_dir() and leaks(cache, patterns) == []  # public corpora are cached, client text never
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not any(str(tmp_path) in p or p in client_files for p in summary["config"]["client_data"])
    assert summary["files"] == {"final_mask": "final_mask.safetensors", "summary": "summary.json",
                                "log": "log.json", "client_masks": "private/client_masks.safetensors"}
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["run"]["calibration"] == "recomputed and verified"


def test_positive_control_the_scanner_finds_kept_data(tiny_folder, client_files, tmp_path, cache, monkeypatch):
    from secprune.report import writer

    written = {}  # each report file's mode the moment it is written (nothing chmods it afterwards)

    def recording_write(path, data):
        real_write(path, data)
        written[path.name] = (stat.S_IMODE(os.stat(path).st_mode), stat.S_IMODE(os.stat(path.parent).st_mode))

    real_write = writer.atomic_write
    monkeypatch.setattr(writer, "atomic_write", recording_write)
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(out),
                 "--keep-calibration", "--save-client-masks", "--quiet", "--baselines"]) == 0
    assert leaks(out, needles()) == ["private/calibration.pt"]
    assert stat.S_IMODE(os.stat(out / "private").st_mode) == 0o700
    # reconstructions only when asked, owner-only, and the report quoting them is owner-only too
    assert main(["audit", "--run", str(out), "--out", str(tmp_path / "audit"), "--report", str(tmp_path / "rep"),
                 "--show-reconstructions", "--quiet", *AUDIT_BUDGET]) == 0
    rec = tmp_path / "audit" / "private" / "reconstructions.json"
    assert stat.S_IMODE(os.stat(rec).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "rep").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "rep" / "report.html").st_mode) == 0o600
    assert {"report.html", "report.md", "report.json"} <= set(written)
    assert set(written.values()) == {(0o600, 0o700)}, written


def test_audit_refuses_changed_client_data_and_never_prunes_on_a_typo(tiny_folder, client_files, tmp_path, cache,
                                                                   capsys):
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(out),
                 "--save-client-masks", "--quiet", "--baselines"]) == 0
    capsys.readouterr()
    # a mistyped --run is an error, and nothing is pruned or written
    assert main(["audit", "--run", str(tmp_path / "rnu"), "--out", str(tmp_path / "a1"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--run" in err and "is not a `secprune prune` output" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "rnu").exists() and not (tmp_path / "a1").exists()
    # other text in place of a client's file: the recomputed calibration does not reproduce the masks
    other = tmp_path / "other.txt"
    other.write_text("a completely different private document about gardens and rivers. " * 40)
    assert main(["audit", "--run", str(out), "--client-data", str(other), client_files[1],
                 "--out", str(tmp_path / "a2"), "--quiet", *AUDIT_BUDGET]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not reproduce its client masks" in err and len(err.splitlines()) == 1
