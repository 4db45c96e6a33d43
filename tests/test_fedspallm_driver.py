"""FedSpaLLM rounds on a tiny random LLaMA: one client == SparseGPT, exact sparsity, sampling, secure sums, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from secprune.capture import first_layer_inputs
from secprune.fedprllm.driver import LocalSpec, federated_prune
from secprune.fedspallm import FedSpaSpec, fedspallm_prune, target_pruned
from secprune.methods import SparseGPT
from secprune.model import all_prunable, decoder_layers, prunable_linears
from secprune.topk import priority


def tiny_model(layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    model.config.use_cache = False
    return model


def windows(n=9, seqlen=16, seed=0):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def split(n, m):
    return [np.asarray(a) for a in np.array_split(np.arange(n), m)]


@torch.no_grad()
def reference_sparsegpt(model, wins, *, sparsity, group, seed, batch_size=8):
    """Plain sequential SparseGPT with OBS update, Hessians from full-model forwards (independent of the driver)."""
    method = SparseGPT(update=True)
    dense = {n: lin.weight.data.clone() for n, lin in all_prunable(model).items()}
    out = {}
    for li, layer in enumerate(decoder_layers(model)):
        lins = prunable_linears(layer)
        H = {n: torch.zeros(lin.in_features, lin.in_features) for n, lin in lins.items()}
        handles = []
        for n, lin in lins.items():
            def hook(_m, inp, _o, h=H[n]):
                x = inp[0].float()
                for b in range(x.shape[0]):
                    h += x[b].T @ x[b]
            handles.append(lin.module.register_forward_hook(hook))
        for s in range(0, len(wins), batch_size):
            model(wins[s:s + batch_size], use_cache=False)
        for h in handles:
            h.remove()
        for n, lin in lins.items():
            prio = priority(shape=tuple(lin.weight.shape), group=group, seed=seed, tag=f"local:{li}.{n}")
            res = method.prune(lin.weight.data, H[n], sparsity=sparsity, group=group, prio=prio)
            lin.weight = res.weight
            out[f"layers.{li}.{n}"] = (res.mask, res.weight)
    for n, lin in all_prunable(model).items():
        lin.weight = dense[n]
    return out


@pytest.mark.parametrize("expansion", [False, True])
def test_one_client_is_plain_sparsegpt(expansion):
    model, wins = tiny_model(), windows()
    ref = reference_sparsegpt(model, wins, sparsity=0.5, group="row", seed=0)
    spec = FedSpaSpec(sparsity=0.5, expansion=expansion, local_group="row", seed=0)
    res = fedspallm_prune(model, wins, [np.arange(len(wins))], spec=spec, progress=False)
    fp = federated_prune(model, wins, [np.arange(len(wins))], progress=False,
                         spec=LocalSpec(SparseGPT(update=True), 0.5, "row", 0))
    for name, (mask, weight) in ref.items():
        assert torch.equal(res.masks[name], mask), name
        assert torch.equal(fp.client_masks.get(0, name), mask), name
        torch.testing.assert_close(res.weights[name], weight, rtol=1e-5, atol=1e-6)
    # the model is left dense
    assert all(float((lin.weight == 0).float().mean()) < 0.01 for lin in all_prunable(model).values())


@pytest.mark.parametrize("sparsity", [0.6])
def test_three_clients_eq5_eq7_inside_the_driver(sparsity):
    model, wins = tiny_model(), windows()
    parts = split(len(wins), 3)
    res = fedspallm_prune(model, wins, parts, spec=FedSpaSpec(sparsity=sparsity, expansion=True),
                          keep_clients=[0, 1, 2], progress=False)
    off = fedspallm_prune(model, wins, parts, spec=FedSpaSpec(sparsity=sparsity, expansion=False),
                          progress=False)
    for name, mask in res.masks.items():
        d = mask.numel()
        assert int(mask.sum()) == target_pruned(sparsity=sparsity, numel=d), name  # exact after expansion
        # direct Eq. 5 / Eq. 6 from the clients' own round-1 models (pruned entries are exact zeros)
        W = np.stack([res.standalone[i][name].numpy().astype(np.float64) for i in range(3)])
        kept = W != 0
        cnt = kept.sum(0)
        avg = np.where(cnt > 0, W.sum(0) / np.maximum(cnt, 1), 0.0)
        C = 3 - cnt
        np.testing.assert_array_equal(res.counts[name].numpy(), C)
        m = mask.numpy()
        np.testing.assert_allclose(res.weights[name].numpy(), np.where(m, 0.0, avg), rtol=1e-5, atol=1e-7)
        assert np.all(m[C == 3])
        extra, left = m & (C < 3), ~m
        if extra.any() and left.any():
            assert C[extra].min() >= C[left].max()  # most-agreed first (Eq. 7)
        # expansion off: the intersection, below the target when the clients disagree
        np.testing.assert_array_equal(off.masks[name].numpy(), C == 3)
        np.testing.assert_allclose(off.weights[name].numpy(), avg, rtol=1e-5, atol=1e-7)
    assert res.rounds[0]["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    assert off.rounds[0]["sparsity"] < sparsity - 0.01
    assert off.rounds[0]["sparsity"] == pytest.approx(res.rounds[0]["sparsity_intersection"])


def test_layer_sampling_rounds_cover_layers_and_count_communication():
    model, wins = tiny_model(layers=4), windows()
    parts = split(len(wins), 3)
    spec = FedSpaSpec(sparsity=0.6, rounds=2, layer_sampling=True, resources=[0.5, 0.25, 0.25], seed=1)
    res = fedspallm_prune(model, wins, parts, spec=spec, keep_clients=[0], progress=False)
    assert res.standalone == {}  # client 0 did not prune every layer
    names = list(all_prunable(model))
    layer_numel = {li: sum(all_prunable(model)[n].weight.numel() for n in names if n.startswith(f"layers.{li}."))
                   for li in range(4)}
    for t, log in enumerate(res.rounds):
        assert log["layers_per_client"] == [2, 1, 1]
        assert min(log["clients_per_layer"]) >= 1  # Corollary 4.1: every layer aggregated each round
        assert log["sparsity"] == pytest.approx(0.6, abs=1e-4)
        sched = res.schedule[t]
        assert set().union(*map(set, sched)) == set(range(4))
        for rec in res.communication["rounds"][t]["clients"]:
            numel = sum(layer_numel[li] for li in sched[rec["client"]])
            assert rec["upload_mask_bits"] == numel
            assert rec["upload_values"] < 0.45 * numel  # kept values only
            if t == 0:
                assert rec["download_values"] == numel and rec["download_mask_bits"] == 0  # dense layers
            else:
                assert rec["download_mask_bits"] == numel
    for name, mask in res.masks.items():
        assert int(mask.sum()) == target_pruned(sparsity=0.6, numel=mask.numel())
        assert torch.all(res.weights[name][mask] == 0)
        assert 1 <= res.participants[name] <= 3


def test_secure_aggregation_fixed_point_error():
    model, wins = tiny_model(), windows(n=6)
    parts = split(len(wins), 3)  # three clients: the fewest a secure sum covers
    spec = FedSpaSpec(sparsity=0.5, fixed_point_bits=14)
    plain = fedspallm_prune(model, wins, parts, spec=spec, progress=False)
    sec = fedspallm_prune(model, wins, parts, spec=spec, secure="pairwise", secagg_options={"colluders": 0},
                          progress=False)
    assert sec.secagg["backend"] == "pairwise" and sec.secagg["total_bytes"] > 0
    assert sec.secagg["clipped_entries"] == 0
    err = sec.secagg["max_abs_error"]
    assert err > 0
    for name in plain.masks:
        bound = spec.clip_factor * float(all_prunable(model)[name].weight.detach().abs().max()) / 2 ** (14 + 1)
        same = plain.masks[name] == sec.masks[name]
        assert float(same.float().mean()) > 0.999
        both = same & ~plain.masks[name]
        assert (plain.weights[name][both] - sec.weights[name][both]).abs().max() <= bound + 1e-7
    assert all(c["secure_upload_bytes"] > 0 for c in sec.communication["rounds"][0]["clients"])


def test_cli_run_fedspallm_end_to_end(tmp_path, monkeypatch):
    """`secprune prune --algorithm fedspallm` through run_prune with the tiny model and synthetic windows."""
    from secprune import calibration
    from secprune import run as run_mod
    from secprune.cli import main

    model, wins = tiny_model(), windows(n=8)
    monkeypatch.setattr(run_mod, "prepare", lambda cfg: run_mod.Prepared(
        model, None, calibration.Calibration(wins, split(len(wins), cfg.clients), ["synthetic"] * len(wins),
                                             {"partition": "test"}), {"ptb": windows(n=2, seed=5)}))
    out = tmp_path / "run"
    rc = main(["prune", "--algorithm", "fedspallm", "--clients", "4", "--nsamples", "8", "--sparsity", "0.6",
               "--baselines", "dense", "local-only", "random", "--local-only-clients", "2", "--rounds", "2",
               "--layer-sampling", "--resources", "0.5", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    r = summary["results"]
    assert set(r) == {"dense", "federated", "local-only", "random"}
    assert r["local-only"]["clients_evaluated"] == 2
    assert r["federated"]["mask_sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert r["federated"]["weight_sparsity"] >= r["federated"]["mask_sparsity"] - 1e-9
    assert summary["config"]["method"] == "sparsegpt" and summary["config"]["sparsegpt_update"] is True
    assert summary["communication"]["rounds"] == 2 and len(summary["fedspallm"]["sparsity_intersection"]) == 2
    detail = json.loads((out / "log.json").read_text())
    assert len(detail["fedspallm_rounds"]) == 2 and len(detail["communication"]["per_round"]) == 2
    assert (out / "final_mask.safetensors").exists() and (out / "global_weights.safetensors").exists()
    assert main(["prune", "--algorithm", "fedspallm", "--clients", "1", "--nsamples", "8", "--layer-sampling",
                 "--resources", "0.1", "--out", str(tmp_path / "bad"), "--quiet"]) == 2  # Corollary 4.1
    assert main(["prune", "--algorithm", "fedspallm", "--rounds", "0", "--out", str(tmp_path / "bad")]) == 2


def test_first_layer_inputs_unchanged_by_driver():
    model, wins = tiny_model(), windows(n=4)
    before = first_layer_inputs(model, wins)
    fedspallm_prune(model, wins, split(4, 2), spec=FedSpaSpec(sparsity=0.5), progress=False)
    torch.testing.assert_close(first_layer_inputs(model, wins), before)


class _Crash(Exception):
    pass


def _crash_after(step_to_crash: int, n_layers: int):
    def on_layer(t, li):
        if t * n_layers + li == step_to_crash:
            raise _Crash
    return on_layer


@pytest.mark.parametrize(("crash_step", "secure"), [(2, None), (3, None), (5, "pairwise")])
def test_checkpoint_resume_gives_identical_result(tmp_path, crash_step, secure):
    # prepare: 2 rounds x 3 layers with layer sampling; crash mid-round 1 (step 2 = round 0, layer 2 is the
    # round boundary; step 3 = round 1, layer 0; step 5 = the last step, secure sums)
    model, wins = tiny_model(layers=3), windows()
    if secure is None:
        parts = split(len(wins), 3)
        spec = FedSpaSpec(sparsity=0.6, rounds=2, layer_sampling=True, resources=[1.0, 0.5, 0.5], seed=3)
    else:  # every layer's secure sum over at least three clients
        parts = split(len(wins), 4)
        spec = FedSpaSpec(sparsity=0.6, rounds=2, layer_sampling=True, resources=[1.0, 1.0, 1.0, 0.34], seed=3)
    opts = {"secagg_options": {"colluders": 0}} if secure else {}
    full = fedspallm_prune(model, wins, parts, spec=spec, secure=secure, keep_clients=[0], progress=False, **opts)
    ck = tmp_path / "ck"

    # execute: a run that dies after `crash_step`, then the same call again
    with pytest.raises(_Crash):
        fedspallm_prune(model, wins, parts, spec=spec, secure=secure, keep_clients=[0], progress=False,
                        checkpoint=ck, on_layer=_crash_after(crash_step, 3), **opts)
    assert torch.load(ck / "state.pt", weights_only=False)["step"] == crash_step + 1
    seen = []
    resumed = fedspallm_prune(model, wins, parts, spec=spec, secure=secure, keep_clients=[0], progress=False,
                              checkpoint=ck, on_layer=lambda t, li: seen.append(t * 3 + li), **opts)

    # assert: only the missing steps ran, and everything equals the uninterrupted run
    assert seen == list(range(crash_step + 1, 6))
    for field in ("weights", "masks", "counts"):
        a, b = getattr(full, field), getattr(resumed, field)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.participants == resumed.participants
    assert full.standalone.keys() == resumed.standalone.keys() == {0}
    assert all(torch.equal(full.standalone[0][k], resumed.standalone[0][k]) for k in full.standalone[0])
    assert full.rounds == resumed.rounds
    assert full.communication == resumed.communication
    if secure:
        assert resumed.secagg["total_bytes"] == full.secagg["total_bytes"] > 0
        assert resumed.secagg["summers"] == full.secagg["summers"]  # bytes, entries, per-round logs


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    model, wins = tiny_model(), windows(n=6)
    parts = split(len(wins), 2)
    ck = tmp_path / "ck"
    with pytest.raises(_Crash):
        fedspallm_prune(model, wins, parts, spec=FedSpaSpec(sparsity=0.5), progress=False, checkpoint=ck,
                        on_layer=_crash_after(0, 2))
    seen = []
    other = fedspallm_prune(model, wins, parts, spec=FedSpaSpec(sparsity=0.7), progress=False, checkpoint=ck,
                            on_layer=lambda t, li: seen.append(li))
    assert seen == [0, 1]  # different sparsity: nothing resumed
    assert all(int(m.sum()) == target_pruned(sparsity=0.7, numel=m.numel()) for m in other.masks.values())


@pytest.mark.parametrize(("args", "flag"), [
    (["--algorithm", "fedspallm", "--method", "wanda"], "--method wanda"),
    (["--algorithm", "fedspallm", "--no-sparsegpt-update"], "--no-sparsegpt-update"),
    (["--algorithm", "fedspallm", "--strategy", "iterative"], "--strategy iterative"),
    (["--algorithm", "fedspallm", "--scaling"], "--scaling"),
    (["--rounds", "3"], "--rounds 3"),
    (["--layer-sampling"], "--layer-sampling"),
    (["--no-expansion"], "--no-expansion"),
])
def test_options_of_the_other_algorithm_are_refused(tmp_path, capsys, args, flag):
    from secprune.cli import main

    code = main(["prune", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err
    assert not (tmp_path / "run").exists()


def test_auto_defaults_follow_the_algorithm():
    from secprune.config import PruneConfig

    fed = PruneConfig(algorithm="fedspallm").validate()
    assert (fed.method, fed.sparsegpt_update, fed.local_group) == ("sparsegpt", True, "layer")
    explicit = PruneConfig(algorithm="fedspallm", method="sparsegpt", sparsegpt_update=True,
                           local_group="row").validate()
    assert (explicit.method, explicit.local_group) == ("sparsegpt", "row")
    pr = PruneConfig().validate()
    assert (pr.method, pr.sparsegpt_update, pr.local_group) == ("wanda", False, "row")
    assert PruneConfig(method="sparsegpt", sparsegpt_update=True).validate().sparsegpt_update is True
