"""Flower's Deployment Engine for real: a SuperLink and one SuperNode process per client on localhost.

Each client is started with `secprune client` (its own data file, its own key, its own state folder) and
the run is submitted with `secprune serve --superlink`, as README shows; the final mask must equal the
in-process simulation's bit for bit. Killing a SuperNode mid-session is a real SIGKILL of its processes.
"""

import json
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

from secprune.cli import main  # noqa: E402
from secprune.flower.localhost import Deployment  # noqa: E402
from secprune.masks import MaskSet  # noqa: E402

from .test_flower import COLLUDERS, FLAGS, simulate, threat_flags  # noqa: E402

pytestmark = pytest.mark.deployment
BASE = ["--nsamples", "6", "--seqlen", "16", "--eval", "--stage-timeout", "180"]


def start(fed, tmp_path, secure, **kw) -> Deployment:
    keys = str(fed["root"] / "keys")
    clients = [["--client-id", str(i), "--client-data", f, "--keys", keys, "--state-dir", str(tmp_path / f"s{i}"),
                *COLLUDERS] + kw.pop(f"extra{i}", []) for i, f in enumerate(fed["files"])]
    if secure == "he":
        clients.append(["--key-holder", "--keys", keys, "--state-dir", str(tmp_path / "sk"), *COLLUDERS])
    return Deployment(tmp_path / "deploy", clients, **kw).start()


def serve(dep, fed, algo, secure, out, *, timeout=900):
    args = ["--model", str(fed["model"]), "--clients", "4", *BASE, "--secure-agg", secure, *threat_flags(secure),
            *FLAGS[algo], "--out", str(out)]
    if secure != "none":
        args += ["--directory", str(fed["root"] / "keys" / "directory.json")]
    return dep.serve(args, timeout=timeout)


def identical(a, b) -> bool:
    a, b = MaskSet.load(a / "final_mask.safetensors"), MaskSet.load(b / "final_mask.safetensors")
    return set(a.names()) == set(b.names()) and all(np.array_equal(a.packed[n], b.packed[n]) for n in a.names())


CI_CASES = [("one-shot", "pairwise"), ("iterative", "he"), ("fedspallm", "none")]  # each strategy and backend once
ALL_CASES = [(a, s) for a in FLAGS for s in ("none", "pairwise", "he")]


@pytest.mark.parametrize("algo, secure", [pytest.param(a, s, marks=() if (a, s) in CI_CASES else pytest.mark.slow)
                                          for a, s in ALL_CASES])
def test_deployment_equals_simulation(federation, tmp_path, algo, secure):
    sim = simulate(federation, algo, secure, tmp_path / "sim")
    dep = start(federation, tmp_path, secure)
    try:
        done = serve(dep, federation, algo, secure, tmp_path / "out")
    finally:
        dep.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["engine"] == "flower" and result["mask_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert identical(sim, tmp_path / "out")
    log = json.loads((tmp_path / "out" / "log.json").read_text())
    flower = log["wire"]["flower_bytes"]
    protocol = log["wire"]["protocol_bytes"]
    for c in ("0", "1", "2", "3"):  # Flower's messages carry our protocol bytes plus its own framing
        assert sum(flower[c].values()) >= sum(protocol[c].values()) > 0


def _kill_when_hanging(dep, tmp_path, clients, stage, timeout=600):
    t0 = time.time()
    pending = set(clients)
    while pending and time.time() - t0 < timeout:
        for c in list(pending):
            if (tmp_path / f"s{c}" / f"hang-{stage}").exists():
                dep.kill(f"node{c}")  # the SuperNode and its ClientApp, SIGKILL
                pending.discard(c)
        time.sleep(0.5)
    assert not pending, f"clients {pending} never reached {stage}"


def test_supernode_killed_after_upload_is_recovered(federation, tmp_path):
    import threading

    sim = simulate(federation, "one-shot", "pairwise", tmp_path / "sim")
    dep = start(federation, tmp_path, "pairwise", extra2=["--test-hang-at", "consistency"])
    try:
        killer = threading.Thread(target=_kill_when_hanging, args=(dep, tmp_path, [2], "consistency"))
        killer.start()
        done = serve(dep, federation, "one-shot", "pairwise", tmp_path / "out")
        killer.join()
    finally:
        dep.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibration"]["clients_at_end"] == [0, 1, 3]  # client 2 was gone ...
    assert identical(sim, tmp_path / "out")  # ... but its upload counted: the same mask as all four


def test_below_threshold_aborts_cleanly(federation, tmp_path):
    import threading

    dep = start(federation, tmp_path, "pairwise", extra1=["--test-hang-at", "consistency"],
                extra2=["--test-hang-at", "consistency"])
    try:
        killer = threading.Thread(target=_kill_when_hanging, args=(dep, tmp_path, [1, 2], "consistency"))
        killer.start()
        done = serve(dep, federation, "one-shot", "pairwise", tmp_path / "out")
        killer.join()
    finally:
        dep.stop()
    assert done.returncode == 1 and "no new output" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tls_and_supernode_authentication(federation, tmp_path):
    sim = simulate(federation, "one-shot", "pairwise", tmp_path / "sim")
    dep = start(federation, tmp_path, "pairwise", tls=True, auth=True)
    try:
        done = serve(dep, federation, "one-shot", "pairwise", tmp_path / "out")
    finally:
        dep.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    assert identical(sim, tmp_path / "out")


def test_flower_simulation_engine_equals_in_process(tiny_folder, tmp_path):
    """`secprune serve --simulation`: Flower's own simulation engine (Ray), partitions of a built-in corpus."""
    common = ["--model", str(tiny_folder), "--clients", "3", "--nsamples", "6", "--seqlen", "16", "--calib", "ptb",
              "--eval"]
    assert main(["prune", *common, "--baselines", "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    assert main(["keys", "--clients", "3", "--out", str(tmp_path / "keys"), "--quiet"]) == 0
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "secprune", "serve", "--simulation", *common, "--secure-agg",
                           "pairwise", *COLLUDERS, "--directory", str(tmp_path / "keys" / "directory.json"), "--keys",
                           str(tmp_path / "keys"), "--out", str(tmp_path / "out"), "--flower-home",
                           str(tmp_path / "home")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["engine"] == "flower-simulation"
    assert identical(tmp_path / "sim", tmp_path / "out")
    # the run had a local SuperLink of its own (its log is under --flower-home), and it is gone
    from secprune.flower.localhost import local_superlinks

    assert (tmp_path / "home" / "local-superlink" / "superlink.log").is_file()
    assert local_superlinks(tmp_path / "home") == []
