"""The distributed driver (Flower's stages) against the in-process simulation, on an in-process transport.

Every stage runs the ClientApp's own handler, which rebuilds the client from its files (data, keys, saved
protocol state), and every content crosses Flower's record serialization; the Deployment Engine runs the
same handlers in separate processes (tests/test_flower_deployment.py).
"""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from secprune.cli import main  # noqa: E402
from secprune.config import PruneConfig  # noqa: E402
from secprune.fedprllm.aggregate import final_mask  # noqa: E402
from secprune.flower.driver import Refused, ServerRun  # noqa: E402
from secprune.flower.settings import app_pyproject, config_from_run, run_config_from  # noqa: E402
from secprune.masks import MaskSet  # noqa: E402
from secprune.model import load_model, param_names  # noqa: E402
from secprune.secagg.errors import SecAggAbortError  # noqa: E402

from .local_transport import LocalTransport  # noqa: E402
from .test_privacy_outputs import needles  # noqa: E402

# every layer sampled by three of the four clients: the fewest a secure sum may cover
ALGOS = {"one-shot": {}, "iterative": {"strategy": "iterative", "scaling": True},
         "fedspallm": {"algorithm": "fedspallm", "rounds": 2, "layer_sampling": True,
                       "resources": [1.0, 1.0, 1.0, 0.5]}}
FLAGS = {"one-shot": [], "iterative": ["--strategy", "iterative", "--scaling"],
         "fedspallm": ["--algorithm", "fedspallm", "--rounds", "2", "--layer-sampling", "--resources", "1", "1",
                       "1", "0.5"]}
COLLUDERS = ["--secagg-colluders", "0"]  # four clients tolerate one dropout when none colludes (t = 3)


def threat_flags(secure: str) -> list[str]:
    return COLLUDERS if secure != "none" else []


def simulate(fed, algo, secure, out, *extra):
    assert main(["prune", "--model", str(fed["model"]), "--client-data", *fed["files"], "--nsamples", "6",
                 "--seqlen", "16", "--eval", "--secure-agg", secure, *threat_flags(secure), *FLAGS[algo], *extra,
                 "--out", str(out), "--quiet"]) == 0
    return out


def distributed(fed, algo, secure, tmp_path, *, drop=None, on_received=None, keys=None, run_id=1):
    cfg = PruneConfig(model=str(fed["model"]), client_data=fed["files"], nsamples=6, seqlen=16, secure_agg=secure,
                      eval=[], baselines=[], secagg_colluders="0" if secure != "none" else None,
                      **ALGOS[algo]).validate()
    run_config = run_config_from(cfg, directory=str(fed["root"] / "keys" / "directory.json"))
    nodes = [{"client-id": i, "data": f, "keys": str((keys or {}).get(i, fed["root"] / "keys")),
              "state-dir": str(tmp_path / f"s{i}"), "secagg-colluders": "0"} for i, f in enumerate(fed["files"])]
    if secure == "he":
        nodes.append({"role": "keyholder", "keys": str(fed["root"] / "keys"), "state-dir": str(tmp_path / "sk"),
                      "secagg-colluders": "0"})
    transport = LocalTransport(run_config, nodes, run_id=run_id)
    transport.drop = {100 + c: stage for c, stage in (drop or {}).items()}
    cfg2, extras = config_from_run(run_config)
    run = ServerRun(transport, cfg2, extras, on_received=on_received)
    return run, run.run(), transport


def same_masks(a: MaskSet, b_masks: dict, names: dict) -> bool:
    return all(torch.equal(a.get(0, names[n]), m) for n, m in b_masks.items())


@pytest.mark.parametrize("secure", ["none", "pairwise", "he"])
@pytest.mark.parametrize("algo", list(ALGOS))
def test_distributed_run_is_bit_identical_to_the_simulation(federation, tiny_folder, tmp_path, algo, secure):
    # prepare: the in-process simulation of the same clients (their own files) and configuration
    sim = simulate(federation, algo, secure, tmp_path / "sim")
    reference = MaskSet.load(sim / "final_mask.safetensors")
    # execute: every client behind the Flower stages, rebuilt from its own files at each stage
    run, result, transport = distributed(federation, algo, secure, tmp_path)
    # assert: the same global mask bit for bit (and FedSpaLLM's same global weights), stages as designed
    names = param_names(load_model(str(tiny_folder))[0])
    masks = run.strategy.final if algo != "fedspallm" else run.strategy.masks
    assert same_masks(reference, masks, names)
    if algo == "fedspallm":
        from safetensors.torch import load_file

        kept = load_file(str(sim / "global_weights.safetensors"))
        for n, w in run.strategy.global_w.items():
            assert torch.equal(w[~masks[n]].cpu(), kept[names[n]])
    expected = {"none": set(), "pairwise": {"advertise", "share", "ack", "consistency", "unmask"},
                "he": {"he_context", "he_verify", "he_decrypt"}}[secure]
    assert set(transport.stages) == {"hello", "step", "finish"} | expected
    steps = transport.stages.count("step")
    assert steps == {"one-shot": 1, "iterative": 2, "fedspallm": 2}[algo]  # tiny model: 2 layers, 2 rounds
    assert not [p for i in range(4) for p in (tmp_path / f"s{i}").glob("run-*")]  # finish deleted all state


def test_client_killed_after_its_upload_is_recovered(federation, tmp_path):
    """Client 2 stops after uploading (before the consistency check): its self mask is recovered from its
    share holders and the sum still holds its vote, exactly as in the simulation of all four."""
    sim = MaskSet.load(simulate(federation, "one-shot", "pairwise", tmp_path / "sim") / "final_mask.safetensors")
    run, result, _ = distributed(federation, "one-shot", "pairwise", tmp_path, drop={2: "consistency"})
    assert result["clients_at_end"] == [0, 1, 3]
    names = param_names(run.model)
    assert same_masks(sim, run.strategy.final, names)


def test_client_killed_before_its_upload_leaves_the_survivors_sum(federation, tmp_path):
    """Client 1 stops before its step reply: the sum is clients 0, 2 and 3's (an independent recomputation from
    their own masks in the simulation), and the dropped client's pairwise masks are removed."""
    sim = simulate(federation, "one-shot", "pairwise", tmp_path / "sim", "--save-client-masks")
    clients = MaskSet.load(sim / "private" / "client_masks.safetensors")
    run, result, _ = distributed(federation, "one-shot", "pairwise", tmp_path, drop={1: "step"})
    names = param_names(run.model)
    for n, counts in run.strategy.counts.items():
        expected = sum(clients.get(i, names[n]).long() for i in (0, 2, 3))
        assert torch.equal(counts, expected)
        assert torch.equal(run.strategy.final[n], final_mask(expected, sparsity=0.5, group="layer", seed=0, name=n))


def test_too_few_survivors_abort_without_output(federation, tmp_path):
    from secprune.flower.server_app import write_outputs

    with pytest.raises(SecAggAbortError):
        run, result, _ = distributed(federation, "one-shot", "pairwise", tmp_path,
                                     drop={1: "consistency", 2: "consistency"})
        write_outputs(run, result, tmp_path / "out", evaluate=False)  # never reached
    assert not (tmp_path / "out").exists()


def test_a_client_refusing_a_stage_is_dropped_and_named(federation, tmp_path):
    """A client whose pinned directory does not match the server's refuses to join: it is dropped, with its reason
    in the run's record, and the others finish (their sum, bit for bit as the simulation's masks of 0, 2, 3)."""
    other = tmp_path / "otherkeys"
    assert main(["keys", "--clients", "4", "--out", str(other), "--quiet"]) == 0
    sim = simulate(federation, "one-shot", "pairwise", tmp_path / "sim", "--save-client-masks")
    clients = MaskSet.load(sim / "private" / "client_masks.safetensors")
    run, result, _ = distributed(federation, "one-shot", "pairwise", tmp_path, keys={1: other})
    assert [(r["stage"], r["client"]) for r in result["refused"]] == [("advertise", 1)]
    assert "another key directory" in result["refused"][0]["reason"]
    assert result["clients_at_end"] == [0, 2, 3]
    names = param_names(run.model)
    for n, counts in run.strategy.counts.items():
        assert torch.equal(counts, sum(clients.get(i, names[n]).long() for i in (0, 2, 3)))
    with pytest.raises(Refused, match="key holder refused stage he_context"):  # the key holder is required
        _refusing_key_holder(federation, tmp_path / "kh", other)


def _refusing_key_holder(fed, tmp_path, other):
    cfg = PruneConfig(model=str(fed["model"]), client_data=fed["files"], nsamples=6, seqlen=16, secure_agg="he",
                      eval=[], baselines=[], secagg_colluders="0").validate()
    run_config = run_config_from(cfg, directory=str(fed["root"] / "keys" / "directory.json"))
    nodes = [{"client-id": i, "data": f, "keys": str(fed["root"] / "keys"), "state-dir": str(tmp_path / f"s{i}"),
              "secagg-colluders": "0"} for i, f in enumerate(fed["files"])]
    nodes.append({"role": "keyholder", "keys": str(other), "state-dir": str(tmp_path / "sk")})
    ServerRun(LocalTransport(run_config, nodes), *config_from_run(run_config)).run()


@pytest.mark.parametrize("secure", ["none", "pairwise", "he"])
def test_server_receives_only_protocol_bytes(federation, tmp_path, secure):
    """Everything the server process receives: known protocol fields only, and no client token sequence."""
    received: list[tuple[str, int, dict]] = []
    run, result, _ = distributed(federation, "one-shot", secure, tmp_path,
                                 on_received=lambda stage, c, content: received.append((stage, c, content)))
    allowed = {"role", "client", "uploads", "timing", "mask/msg", "mask/masked", "context", "plain_modulus",
               "poly_modulus_degree"}
    prefix = {"none": ("mask/plain/",), "he": ("mask/he/",), "pairwise": ()}[secure]
    tok = load_model(str(federation["model"]))[1]
    patterns = needles()
    for text in (open(f).read() for f in federation["files"]):
        ids = np.array(tok(text[:200], add_special_tokens=False).input_ids)
        patterns += [ids[s:s + 12].astype(dt).tobytes() for s in range(0, 60, 3) for dt in ("<i8", "<i4", "u1")]
    for stage, _client, content in received:
        for key, value in content.items():
            # per-matrix vectors only as the backend sends them: plaintext only without a secure sum
            decrypted_sum = secure == "he" and stage == "he_decrypt" and key.endswith("/result")  # key holder
            check_share = secure == "he" and stage == "he_verify" and key.endswith("/verify")  # key holder
            assert key in allowed or key.startswith(prefix) or decrypted_sum or check_share, (stage, key)
            blobs = value if isinstance(value, list) else [value]
            for blob in blobs:
                data = blob.tobytes() if isinstance(blob, np.ndarray) else blob if isinstance(blob, bytes) else \
                    str(blob).encode()
                assert not any(p in data for p in patterns), (stage, key)
    sizes = [json.loads(c["uploads"]) for s, _, c in received if s == "step"]
    assert sizes and all(isinstance(v, dict) for v in sizes)


def test_client_state_is_owner_only(federation, tmp_path):
    """Between stages a client's state (activations, seeds, shares) sits in an owner-only folder of its node."""
    seen = {}

    def spy(stage, client, content):
        if stage == "share" and client == 0:
            run_dir = next((tmp_path / "s0").glob("run-*"))
            seen["dir"] = stat.S_IMODE(os.stat(run_dir).st_mode)
            seen["files"] = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in run_dir.iterdir()}
    distributed(federation, "one-shot", "pairwise", tmp_path, on_received=spy)
    assert seen["dir"] == 0o700 and seen["files"] and set(seen["files"].values()) == {0o600}


def test_the_shipped_flower_app_is_current():
    from secprune.flower import APP_DIR

    assert (APP_DIR / "pyproject.toml").read_text() == app_pyproject()


def test_serve_and_client_assemble_flower_commands(tmp_path, capsys, federation):
    assert main(["client", "--superlink", "10.0.0.5:9092", "--client-id", "1", "--client-data",
                 federation["files"][1], "--keys", str(federation["root"] / "keys"), "--port", "9101",
                 "--dry-run"]) == 0
    cmd = capsys.readouterr().out
    assert cmd.startswith("flower-supernode --superlink 10.0.0.5:9092 --port 9101 --node-config")
    assert "client-id=1" in cmd and f'data="{federation["files"][1]}"' in cmd and "--insecure" in cmd
    out = tmp_path / "run"
    assert main(["serve", "--superlink", "10.0.0.5:9093", "--clients", "4", "--secure-agg", "pairwise",
                 "--directory", str(federation["root"] / "keys" / "directory.json"), "--out", str(out),
                 "--flower-home", str(tmp_path / "home"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "flwr run" in text and 'secure-agg = "pairwise"' in text and f'out = "{out}"' in text
    assert text.startswith(f"FLWR_HOME={tmp_path / 'home'} flwr run ")  # runnable as printed
    for argv, needle in ((["serve", "--clients", "3"], "--superlink"),
                         (["serve", "--superlink", "x:1", "--clients", "2", "--client-data", "a", "b"],
                          "--client-data"),
                         (["serve", "--superlink", "x:1", "--clients", "4", "--secure-agg", "he"], "--directory"),
                         (["serve", "--simulation", "--clients", "3", "--dp-noise", "skellam", "--dp-lambda", "5"],
                          "--dp-noise"),
                         (["serve", "--superlink", "x:1", "--clients", "4", "--eval", "ptb"],
                          "--eval: the Flower server evaluates only with --evaluate"),
                         (["serve", "--superlink", "x:1", "--clients", "4", "--evaluate", "--baselines", "dense"],
                          "--baselines: not in the Flower apps"),
                         (["client", "--superlink", "x:1"], "--client-id"),
                         (["client", "--superlink", "x:1", "--client-id", "0", "--client-data", "/nonexistent"],
                          "--client-data")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1


def test_a_deployed_client_never_takes_its_keys_or_role_from_the_server(tmp_path):
    """The run config is the server's: it may point simulated nodes at a keys folder, but a `secprune client`
    node (it names itself) keeps its own keys, or none, and its own role."""
    from secprune.flower.node import ClientNode

    cfg = PruneConfig(clients=4, secure_agg="he", secagg_colluders="0").validate()
    served = str(tmp_path / "server-chosen-keys")
    deployed = ClientNode(cfg=cfg, node_config={"client-id": 2, "partition-id": 2, "num-partitions": 3,
                                                "state-dir": str(tmp_path / "a")}, run_id=1, run_keys=served)
    assert deployed.keys is None and deployed.role == "client"
    simulated = ClientNode(cfg=cfg, node_config={"partition-id": 4, "num-partitions": 5,
                                                 "state-dir": str(tmp_path / "b")}, run_id=1, run_keys=served)
    assert simulated.keys == Path(served) and simulated.role == "keyholder"


def test_the_server_logs_only_known_timing_fields_from_a_client():
    from secprune.flower.driver import _timing

    sent = json.dumps({"model_load_s": 1.5, "prune_s": "2", "upload_s": 0.25, "text": "a client's secret"})
    assert _timing(sent) == {"model_load_s": 1.5, "prune_s": 2.0, "upload_s": 0.25}
    assert _timing("not json") == {} and _timing("[1, 2]") == {} and _timing('{"prune_s": "x"}') == {}


def test_the_node_kinds_are_the_strategies_kinds():
    from secprune.flower.node import KINDS, build_strategy
    from secprune.strategy import Task

    for algo, extra in (("fedprllm", {}), ("fedspallm", {"algorithm": "fedspallm"})):
        cfg = PruneConfig(clients=4, secure_agg="pairwise", secagg_colluders="0", **extra).validate()
        kinds = build_strategy(cfg, secure=True).kinds(Task(step=0, round=0, layer=0, clients=[]))
        assert tuple(k.name for k in kinds) == KINDS[algo]


def _node(federation, tmp_path, secure="none", **node):
    from secprune.flower.client_app import handle
    from secprune.flower.node import build_strategy, task_spec

    cfg = PruneConfig(model=str(federation["model"]), client_data=federation["files"], nsamples=6, seqlen=16,
                      secure_agg=secure, eval=[], baselines=[],
                      secagg_colluders="0" if secure != "none" else None).validate()
    run_config = run_config_from(cfg, directory=str(federation["root"] / "keys" / "directory.json"))
    config = {"client-id": 0, "data": federation["files"][0], "keys": str(federation["root"] / "keys"),
              "state-dir": str(tmp_path / "s0"), "secagg-colluders": "0"} | node
    tasks = json.dumps([task_spec(t) for t in build_strategy(cfg, secure=secure != "none").tasks(n_layers=2)])
    return (lambda stage, content: handle(stage, content, run_config=run_config, node_config=config, run_id=7)), tasks


def test_server_supplied_names_never_become_paths(federation, tmp_path):
    """A server naming a matrix '../../x' or a kind '../mask' reads nothing outside the node's state folder: the
    ClientApp refuses, and a refused stage deletes the node's state of the run."""
    from secprune.errors import UsageError

    call, tasks = _node(federation, tmp_path)
    outside = tmp_path / "s0" / "secret.npy"
    outside.parent.mkdir(parents=True)
    np.save(outside, np.ones(3))
    for names in (["../../secret"], ["layers.0.self_attn.q_proj/../../../secret"], ["./layers.0.self_attn.q_proj"]):
        with pytest.raises(ValueError, match="matrix name"):
            call("step", {"tasks": tasks, "mask/names": json.dumps(names)})
        assert not list((tmp_path / "s0").glob("run-*"))  # the refused run's state is gone
    call, _ = _node(federation, tmp_path, secure="pairwise")
    with pytest.raises(UsageError, match="vector kind '../mask'"):
        call("advertise", {"../mask/msg": b"x"})
    assert outside.exists()


def test_a_tampered_directory_is_refused_on_the_flower_path(federation, tmp_path):
    import shutil

    keys = tmp_path / "keys"
    shutil.copytree(federation["root"] / "keys", keys)
    text = (keys / "directory.json").read_text()
    first = json.loads(text)["keys"]["1"]
    (keys / "directory.json").write_text(text.replace(first, "00" * 32))  # client 1's key swapped
    call, _ = _node(federation, tmp_path, secure="pairwise", keys=str(keys))
    from secprune.errors import UsageError

    with pytest.raises(UsageError, match="keys: .*does not verify"):
        call("advertise", {"mask/msg": b"x"})
    call, _ = _node(federation, tmp_path, secure="pairwise", keys=str(federation["root"] / "keys"),
                    authority="11" * 32)  # pinned to another authority
    with pytest.raises(UsageError, match="not signed by the expected authority"):
        call("advertise", {"mask/msg": b"x"})


def test_a_second_run_cannot_ask_a_node_for_the_same_inputs(federation, tmp_path):
    """The ledger lives beside the runs in each node's state folder: a new run (new run id, new session) that
    asks for the same masks finds every client refusing, and nothing is summed twice."""
    run, result, _ = distributed(federation, "one-shot", "pairwise", tmp_path)
    assert result["clients_at_end"] == [0, 1, 2, 3]
    for i in range(4):
        assert (tmp_path / f"s{i}" / "ledger.json").is_file()
    with pytest.raises(SecAggAbortError, match="client 0 at step: .*the input layers.0.* was already released"):
        distributed(federation, "one-shot", "pairwise", tmp_path, run_id=2)
    with pytest.raises(SecAggAbortError, match="already released"):  # the HE backend keeps the same ledger
        distributed(federation, "one-shot", "he", tmp_path, run_id=3)


def test_he_a_client_shifting_its_upload_is_rejected_named_and_left_out(federation, tmp_path, monkeypatch):
    """Client 2 adds 1 to a packed slot of every upload (its proof is of its true mask): the key holder's and the
    server's shares of its checks reject it in he_verify, it is named and dropped, and the sums are exactly
    clients 0, 1 and 3's (recomputed from their own masks in the simulation)."""
    from secprune.secagg import he as he_mod

    sim = simulate(federation, "one-shot", "none", tmp_path / "sim", "--save-client-masks")
    clients = MaskSet.load(sim / "private" / "client_masks.safetensors")
    real_encode, real_encrypt, who = he_mod.encode_slots, he_mod.HEClient.encrypt, {}

    def encode(vector, *, base, per_slot):
        out = real_encode(vector, base=base, per_slot=per_slot)
        if who.get("id") == 2:
            out[0] += 1
        return out

    def encrypt(self, cfg, vector, *, name="vector"):
        who["id"] = self.id
        return real_encrypt(self, cfg, vector, name=name)

    monkeypatch.setattr(he_mod, "encode_slots", encode)
    monkeypatch.setattr(he_mod.HEClient, "encrypt", encrypt)
    run, result, _ = distributed(federation, "one-shot", "he", tmp_path)
    assert result["clients_at_end"] == [0, 1, 3]
    assert {(r["stage"], r["client"]) for r in run.refused} == {("he_verify", 2)}
    assert all("do not encrypt the input it proved" in r["reason"] for r in run.refused)
    names = param_names(run.model)
    for n, counts in run.strategy.counts.items():
        assert torch.equal(counts, sum(clients.get(i, names[n]).long() for i in (0, 1, 3)))


def test_he_clients_refuse_a_rule_of_the_servers_choosing(federation, tmp_path, monkeypatch):
    """The rule a client proves is its own strategy's: a server asking for another (a question about the input,
    e.g. 'is entry j pruned') is refused by every client, which is dropped, and the run aborts."""
    from secprune.secagg.he_validation import Rule

    real = ServerRun._he_cfgs

    def lying(self, kind, layout, batch):
        out = real(self, kind, layout, batch)
        for values in out.values():
            values["rule"] = Rule("row", tuple(values["rule"]["shape"]), 1).encode()
        return out

    monkeypatch.setattr(ServerRun, "_he_cfgs", lying)
    with pytest.raises(SecAggAbortError, match=r"client 0 at step: he round layers.0.self_attn.q_proj: the server asks "
                                               r"for a proof of Rule\(group='row', shape=\(64, 64\), ones=1\), but "
                                               r"this client's strategy gives .*ones=32\); refused"):
        distributed(federation, "one-shot", "he", tmp_path)


def _session_members(sid: int) -> list[int]:
    import os

    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.getsid(int(p)) == sid:
                    pids.append(int(p))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def test_sigterm_to_secprune_client_takes_its_supernode_down(tmp_path, federation):
    """`kill <pid>` of `secprune client` (the pid `&` gives) must not leave its flower-supernode to init."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from secprune.flower.localhost import free_port

    proc = subprocess.Popen([sys.executable, "-m", "secprune", "client", "--superlink", f"127.0.0.1:{free_port()}",
                             "--client-id", "0", "--client-data", federation["files"][0], "--keys",
                             str(federation["root"] / "keys"), "--state-dir", str(tmp_path / "s0"), "--port",
                             str(free_port()), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # a deadline, not a wait: a busy machine may take minutes to start it
    supernode = None
    while supernode is None and time.monotonic() < deadline:  # its SuperNode, in a session of its own
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == proc.pid:  # parent pid
                    supernode = int(p)
        time.sleep(0.2)
    assert supernode is not None, "secprune client started no SuperNode"
    sid = os.getsid(supernode)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 15
    while _session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_members(sid) == []
