"""`secprune prune` end to end on a tiny model folder: outputs, schema, resume, and every bad input."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from secprune.cli import main
from secprune.masks import MaskSet
from secprune.summary import LOG_SCHEMA, SCHEMA

from .conftest import make_model_folder

SMALL = ["--nsamples", "4", "--seqlen", "16", "--eval", "ptb", "--eval-windows", "2", "--eval-seqlen", "16"]


def prune(tiny_folder, client_files, out, *extra):
    return main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(out),
                 "--quiet", *extra])


def test_prune_writes_masks_summary_and_log(tiny_folder, client_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert prune(tiny_folder, client_files, out, "--save-client-masks") == 0
    printed = json.loads(capsys.readouterr().out)  # the result is JSON on stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == SCHEMA and summary["algorithm"] == "fedprllm"
    assert printed["results"]["federated"]["ptb"] == summary["results"]["federated"]["ptb"]
    assert summary["calibration"]["clients"] == 2 and summary["calibration"]["windows"] == 4
    assert set(summary["results"]) == {"dense", "federated", "centralized", "local-only"}
    assert summary["results"]["federated"]["mask_sparsity"] == pytest.approx(0.5)
    assert summary["sparsity"]["mask"] == pytest.approx(0.5) and summary["sparsity"]["target"] == 0.5
    # masks are keyed by the model's own parameter names
    final = MaskSet.load(out / "final_mask.safetensors")
    clients = MaskSet.load(out / "private" / "client_masks.safetensors")
    assert clients.n == 2 and final.n == 1
    up = "model.layers.1.mlp.up_proj.weight"
    assert up in final.names() and len(final.names()) == 14
    counts = sum(clients.get(i, up).int() for i in range(2))
    assert final.get(0, up)[counts == 2].all()  # layer comparison: every weight both clients pruned is pruned
    # private files: owner-only
    assert stat.S_IMODE(os.stat(out / "private").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out / "private" / "client_masks.safetensors").st_mode) == 0o600
    comm = summary["communication"]
    total = sum(np.prod(s) for s in final.shapes.values())
    assert comm["rounds"] == 1 and comm["mask_entries_per_client"] == total
    assert comm["upload_bytes_per_client"] == pytest.approx(total / 8, abs=14)
    sec = summary["secure_aggregation"]
    assert sec["backend"] == "none" and sec["sessions"] == 1  # one key agreement for the whole model
    detail = json.loads((out / "log.json").read_text())
    assert detail["schema"] == LOG_SCHEMA and list(detail["secure_aggregation"]["per_session"]) == ["model"]
    assert "per_session" not in sec and "per_round" not in comm  # detail lives in log.json
    assert not (out / "calibration.pt").exists() and not (out / "private" / "calibration.pt").exists()


def test_keep_calibration_is_owner_only(tiny_folder, client_files, tmp_path):
    out = tmp_path / "run"
    assert prune(tiny_folder, client_files, out, "--baselines", "--keep-calibration") == 0
    cal = torch.load(out / "private" / "calibration.pt", weights_only=False)
    assert cal["windows"].shape == (4, 16) and [len(p) for p in cal["parts"]] == [2, 2]
    assert stat.S_IMODE(os.stat(out / "private" / "calibration.pt").st_mode) == 0o600


@pytest.mark.parametrize("flags, needle", [
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "0"], "--sparsity"),
    (["--clients", "9", "--nsamples", "8"], "more clients than calibration windows"),
    (["--partition", "dirichlet", "--alpha", "0"], "--alpha"),
    (["--alpha", "2"], "--alpha 2.0: only used with --partition dirichlet"),
    (["--model", "/nonexistent/model"], "--model"),
    (["--strategy", "sideways"], "--strategy"),
    (["--sparsity", "abc"], "sparsity"),
    (["--secagg-neighbours", "4"], "--secagg-neighbours 4: only --secure-agg pairwise"),
    (["--secure-agg", "pairwise", "--clients", "4", "--secagg-neighbours", "4"], "--secagg-neighbours 4: above n-1"),
    (["--secure-agg", "pairwise", "--secagg-neighbours", "1"], "--secagg-neighbours 1: below the safe level"),
    (["--secure-agg", "pairwise", "--secagg-neighbours", "5"], "--secagg-neighbours 5: below the safe level"),
    (["--secure-agg", "pairwise", "--secagg-threshold", "3"], "--secagg-threshold 3: below the safe level"),
    (["--secure-agg", "he", "--secagg-threshold", "17"], "--secagg-threshold 17: above the 16 clients"),
    (["--secagg-threshold", "3"], "--secagg-threshold 3: --secure-agg none has no secure aggregation"),
    (["--secure-agg", "he", "--secagg-keys", "/tmp"], "--secagg-keys: only used with --secure-agg pairwise"),
    (["--secure-agg", "pairwise", "--no-secagg-validate"], "--no-secagg-validate: only used with --secure-agg he"),
    (["--method", "sparsegpt", "--sparsegpt-update", "--strategy", "iterative"], "--sparsegpt-update: no effect"),
    (["--sparsegpt-update"], "--sparsegpt-update: only with --method sparsegpt"),
    (["--local-only-clients", "2", "--baselines", "dense"], "--local-only-clients: only used with"),
    (["--eval", "--eval-windows", "3"], "--eval-windows: no test set"),
    (["--resources", "0.5"], "--resources"),
    (["--algorithm", "fedspallm", "--save-client-masks"], "--save-client-masks"),
    (["--algorithm", "fedspallm", "--fixed-point-bits", "12"], "--fixed-point-bits 12: only used with --secure-agg"),
    (["--baselines", "random"], "--baselines random"),
    (["--device", "tpu"], "--device"),
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2^63), got -1"),
    (["--seed", "99999999999999999999"], "--seed must be an integer in [0, 2^63)"),
    (["--secure-agg", "pairwise", "--clients", "4", "--secagg-neighbours", "5"],
     "--secagg-neighbours 5: above n-1 = 3"),
])
def test_bad_flag_one_line_exit_2_no_output(flags, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["prune", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def run_bad(args, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["prune", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "run.partial").exists()
    assert not list(tmp_path.glob(".run.tmp-*"))
    return err


def test_client_data_contradictions(tiny_folder, client_files, tmp_path, capsys):
    base = ["--model", str(tiny_folder), "--client-data", *client_files, *SMALL]
    assert "--clients 5: contradicts the 2 --client-data" in run_bad([*base, "--clients", "5"], tmp_path, capsys)
    assert "--calib: not used with --client-data" in run_bad([*base, "--calib", "ptb"], tmp_path, capsys)
    assert "--partition dirichlet" in run_bad([*base, "--partition", "dirichlet"], tmp_path, capsys)


def test_binary_and_non_utf8_client_data(tiny_folder, client_files, tmp_path, capsys):
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"abc\x00\x01\x02" * 100)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    for path, needle in ((binary, "NUL bytes"), (latin, "is not UTF-8 text"), (empty, "is empty")):
        err = run_bad(["--model", str(tiny_folder), "--client-data", str(path), client_files[1], *SMALL],
                      tmp_path, capsys)
        assert f"--client-data: {path}" in err and needle in err


def test_context_and_test_set_lengths(tiny_folder, client_files, tmp_path, capsys):
    base = ["--model", str(tiny_folder), "--client-data", *client_files, "--nsamples", "4", "--eval", "ptb"]
    err = run_bad([*base, "--seqlen", "129", "--eval-seqlen", "16"], tmp_path, capsys)
    assert "--seqlen 129: longer than the model's context (128 tokens)" in err
    err = run_bad([*base, "--seqlen", "16", "--eval-seqlen", "500"], tmp_path, capsys)
    assert "--eval-seqlen 500: longer than the model's context" in err
    long_ctx = make_model_folder(tmp_path / "long", max_positions=1 << 21)
    err = run_bad(["--model", str(long_ctx), "--client-data", *client_files, "--nsamples", "4", "--seqlen", "16",
                   "--eval", "ptb", "--eval-seqlen", str(1 << 20)], tmp_path, capsys)
    assert f"--eval-seqlen {1 << 20}: the ptb test set has only" in err
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    err = run_bad(["--model", str(tiny_folder), "--client-data", str(short), client_files[1], *SMALL],
                  tmp_path, capsys)
    assert f"--client-data {short} has only 16 tokens" in err


def test_model_folders_that_are_not_usable(tmp_path, capsys):
    from transformers import BertConfig, BertForMaskedLM, ViTConfig

    no_weights = make_model_folder(tmp_path / "no-weights", weights=False)
    assert "has no weights" in run_bad(["--model", str(no_weights)], tmp_path, capsys)
    no_tok = make_model_folder(tmp_path / "no-tok", tokenizer=False)
    assert "has no tokenizer" in run_bad(["--model", str(no_tok), *SMALL, "--clients", "2"], tmp_path, capsys)
    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               vocab_size=100)).save_pretrained(bert)
    assert "holds a BertForMaskedLM checkpoint, not a causal LM" in run_bad(["--model", str(bert)], tmp_path, capsys)
    vit = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(vit)
    assert "--model" in run_bad(["--model", str(vit)], tmp_path, capsys)


def test_toml_config_types_and_overrides(tiny_folder, client_files, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[prune]\nmodel = "{tiny_folder}"\nsparsity = 0.7\nnsamples = 4\nseqlen = 16\n'
                   f'eval = ["ptb"]\neval_windows = 1\neval_seqlen = 16\nbaselines = []\n')
    out = tmp_path / "run"
    assert main(["prune", "--config", str(cfg), "--client-data", *client_files, "--sparsity", "0.6",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["sparsity"] == 0.6 and summary["config"]["nsamples"] == 4
    assert summary["sparsity"]["mask"] == pytest.approx(0.6, abs=0.01)
    capsys.readouterr()
    for body, needle in (("speed = 3", "unknown keys ['speed']"),
                         ('sparsity = "half"', "sparsity = 'half': expected a number"),
                         ("nsamples = 4.5", "nsamples = 4.5: expected an integer"),
                         ("scaling = 1", "scaling = 1: expected true or false"),
                         ('eval = "ptb"', "eval = 'ptb': expected a list of strings"),
                         ("sparsity = ", "is not valid TOML")):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[prune]\n{body}\n")
        assert main(["prune", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1


def test_out_must_be_a_new_or_secprune_folder(tiny_folder, client_files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    for out, needle in ((".", "names the current folder"), ("..", "names the current folder"),
                        (str(a_file), "is a file"), (f"{a_file}/sub", "cannot write there"),
                        ("/proc/secprune-run", "cannot write there")):
        code = main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", out,
                     "--quiet", "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and needle in err and len(err.splitlines()) == 1, (out, err)
    assert a_file.read_text() == "mine"
    # --overwrite never deletes a folder of the user's own files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code = main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(mine),
                 "--quiet", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "was not written by secprune" in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    # ... but replaces an earlier secprune output
    out = tmp_path / "run"
    assert prune(tiny_folder, client_files, out, "--baselines") == 0
    assert prune(tiny_folder, client_files, out, "--baselines") == 2  # exists, no --overwrite
    assert prune(tiny_folder, client_files, out, "--baselines", "--sparsity", "0.6", "--overwrite") == 0
    assert json.loads((out / "summary.json").read_text())["config"]["sparsity"] == 0.6


def test_failed_run_leaves_no_output_and_resumes(tiny_folder, client_files, tmp_path, monkeypatch):
    import secprune.fedprllm.run as run_mod

    out = tmp_path / "run"

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(run_mod, "evaluate_model", boom)
    with pytest.raises(RuntimeError):
        prune(tiny_folder, client_files, out, "--baselines")
    assert not out.exists()
    assert not list(tmp_path.glob(".run.tmp-*"))
    partial = tmp_path / "run.partial"
    assert (partial / "federated" / "state.pt").exists()  # checkpoint kept for resume ...
    for p in (partial, partial / "federated"):  # ... owner-only: it holds activations of the clients' text
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in (partial / "federated").iterdir())
    monkeypatch.undo()
    assert prune(tiny_folder, client_files, out, "--baselines") == 0
    assert (out / "summary.json").exists() and not partial.exists()


def test_fedspallm_run_resumes_without_repruning(tiny_folder, client_files, tmp_path, monkeypatch):
    import secprune.fedspallm.run as fs_run
    import secprune.replay as replay_mod

    out = tmp_path / "run"
    args = ["--algorithm", "fedspallm", "--baselines"]

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(fs_run, "evaluate_model", boom)  # pruning finishes, the evaluation after it fails
    with pytest.raises(RuntimeError):
        prune(tiny_folder, client_files, out, *args)
    assert not out.exists()
    assert (tmp_path / "run.partial" / "fedspallm" / "state.pt").exists()
    monkeypatch.undo()
    monkeypatch.setattr(replay_mod, "first_layer_inputs", boom)  # any re-pruning would call these first
    monkeypatch.setattr(replay_mod, "layer_kwargs", boom)
    assert prune(tiny_folder, client_files, out, *args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == SCHEMA and summary["algorithm"] == "fedspallm"
    assert summary["sparsity"]["mask"] == pytest.approx(0.5, abs=1e-3)
    assert not (tmp_path / "run.partial").exists()


def test_secure_aggregation_backends_give_bit_identical_final_masks(tiny_folder, federation, tmp_path):
    finals, sizes = {}, {}
    for run in ("none", "pairwise", "he", "he-unchecked"):  # none colluding: the smallest secure federation
        backend = run.split("-")[0]
        out = tmp_path / run
        flags = ["--secagg-colluders", "0"] if backend != "none" else []
        flags += ["--no-secagg-validate"] if run == "he-unchecked" else []
        assert prune(tiny_folder, federation["files"], out, "--baselines", "--secure-agg", backend, *flags) == 0
        finals[run] = MaskSet.load(out / "final_mask.safetensors")
        stats = json.loads((out / "summary.json").read_text())["secure_aggregation"]
        assert stats["backend"] == backend and stats["total_bytes"] > 0
        sizes[run] = stats["client_sent_bits_per_entry"]
    for run in ("pairwise", "he", "he-unchecked"):
        for name in finals["none"].names():
            assert np.array_equal(finals[run].packed[name], finals["none"].packed[name])
    assert sizes["he"] > sizes["he-unchecked"] + 40  # the checks' input share alone is 40 bits per entry


def test_both_algorithms_share_the_summary_schema(tiny_folder, client_files, tmp_path):
    keys = {}
    for algo in ("fedprllm", "fedspallm"):
        out = tmp_path / algo
        assert prune(tiny_folder, client_files, out, "--algorithm", algo, "--baselines", "dense", "local-only",
                     "--local-only-clients", "1") == 0
        s = json.loads((out / "summary.json").read_text())
        keys[algo] = s
        assert set(s["results"]) == {"dense", "federated", "local-only"}
        assert s["secure_aggregation"]["backend"] == "none"
        assert (out / "summary.json").stat().st_size < 12_000  # small: per-round detail is in log.json
    shared = {"schema", "secprune_version", "algorithm", "config", "model", "calibration", "evaluation", "results",
              "sparsity", "communication", "secure_aggregation", "time_s", "peak_memory", "files"}
    assert shared <= set(keys["fedprllm"]) and shared <= set(keys["fedspallm"])
    assert set(keys["fedspallm"]) - set(keys["fedprllm"]) == {"fedspallm"}
    for section in ("communication", "sparsity", "model", "calibration"):
        common = {"rounds", "upload_bytes_per_client", "download_bytes_per_client", "total_bytes"} \
            if section == "communication" else set(keys["fedprllm"][section])
        assert common <= set(keys["fedspallm"][section]), section


def test_centralized_sparsegpt_baseline_keeps_the_obs_update(tiny_folder, client_files, tmp_path):
    """The centralized baseline of `--method sparsegpt --sparsegpt-update` is plain SparseGPT with its weight
    update: the same perplexity as FedSpaLLM's client-alone SparseGPT (another code path) on all windows."""
    from secprune import calibration
    from secprune.config import PruneConfig
    from secprune.evaluate import evaluate_model
    from secprune.fedspallm.baselines import standalone_model
    from secprune.fedspallm.driver import FedSpaSpec
    from secprune.model import load_model

    out = tmp_path / "run"
    flags = ["--method", "sparsegpt", "--sparsegpt-update", "--local-group", "layer", "--baselines", "centralized"]
    assert prune(tiny_folder, client_files, out, *flags) == 0
    got = json.loads((out / "summary.json").read_text())["results"]["centralized"]
    cfg = PruneConfig(model=str(tiny_folder), client_data=client_files, nsamples=4, seqlen=16).validate()
    model, tok = load_model(cfg.model)
    calib = calibration.build(cfg, tok)
    evals = {"ptb": calibration.eval_set("ptb", tok, seqlen=16, max_windows=2)}
    w = standalone_model(model, calib.windows, np.arange(4), spec=FedSpaSpec(sparsity=0.5, local_group="layer"))
    expected = evaluate_model(model, evals, weights=w, progress=False)["ptb"]
    masks_only = evaluate_model(model, evals, masks={n: x == 0 for n, x in w.items()}, progress=False)["ptb"]
    assert got["ptb"] == pytest.approx(expected, rel=1e-5)
    assert got["ptb"] != pytest.approx(masks_only, rel=1e-4)  # what the old baseline reported


def test_out_inside_the_model_folder_is_refused(tiny_folder, client_files, tmp_path, capsys):
    code = main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL,
                 "--out", str(tiny_folder / "pruned"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "inside the model folder" in err and len(err.splitlines()) == 1
    assert not (tiny_folder / "pruned").exists()


def test_outputs_are_byte_reproducible(tiny_folder, client_files, tmp_path):
    """Same inputs, same bytes: safetensors writes its metadata from a hash map whose order changes from one
    process (and one map) to the next; the header is rewritten with sorted keys."""
    import hashlib
    import subprocess
    import sys

    for name in ("a", "b"):
        assert prune(tiny_folder, client_files, tmp_path / name, "--scaling", "--baselines") == 0
    for f in ("final_mask.safetensors", "vote_counts.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    code = ("import sys, torch; from pathlib import Path; from secprune.masks import MaskSet; m = MaskSet(2); "
            "[m.put(n, p, torch.arange(35).view(5, 7) % (p + 2) == 0) for n in 'abc' for p in range(2)]; "
            "m.save(Path(sys.argv[1]))")
    digests = set()
    for i in range(3):  # separate processes: separate hash seeds
        path = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert MaskSet.load(tmp_path / "m0.safetensors").get(1, "b").sum() == 12  # still a valid file


def test_a_dead_runs_staging_folder_is_swept_and_sigterm_cleans_up(tiny_folder, client_files, tmp_path, monkeypatch):
    import signal

    import secprune.fedprllm.run as fed_run

    dead = tmp_path / ".run.tmp-999999999"  # no such process
    (dead / "private").mkdir(parents=True)
    (dead / ".secprune").write_text("{}")
    foreign = tmp_path / ".run.tmp-999999998"  # not ours (no marker): never touched
    foreign.mkdir()
    real = fed_run.run_fedprllm

    def killed(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stops the run mid-way
        return real(*a, **kw)

    monkeypatch.setattr(fed_run, "run_fedprllm", killed)
    with pytest.raises(SystemExit) as exc:
        prune(tiny_folder, client_files, tmp_path / "run")
    assert exc.value.code == 128 + signal.SIGTERM
    assert not dead.exists() and foreign.exists()
    assert not list(tmp_path.glob(".run.tmp-*[0-9]")) or list(tmp_path.glob(".run.tmp-*")) == [foreign]
    assert not (tmp_path / "run").exists()
