"""Every supported family on a tiny random model: exact replay, exact sparsity of every pruned matrix, every
weight accounted for (pruned, or not pruned for a stated reason), MoE statistics from the routed tokens."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secprune.errors import UsageError
from secprune.fedprllm.driver import LocalSpec, federated_prune
from secprune.fedspallm.driver import FedSpaSpec, fedspallm_prune
from secprune.methods import SparseGPT, Wanda
from secprune.model import all_prunable, decoder_layers, param_names, prunable_matrices, weight_inventory
from secprune.replay import Replay
from secprune.surgery import apply_masks, restore

from .tiny_models import FAMILIES, MOE, VOCAB, tiny_model

# matrices pruned per decoder block, read off each family's modeling file
PRUNED_PER_BLOCK = {"llama": 7, "mistral": 7, "qwen2": 7, "qwen3": 7, "gemma2": 7, "gemma3": 7, "phi": 6, "phi3": 4,
                    "opt": 6, "gpt2": 4, "gpt_neox": 4, "falcon": 4, "mixtral": 6, "qwen2_moe": 9, "qwen3_moe": 6,
                    "olmoe": 6}
# weights inside a block that must never be pruned, and why
KEPT_IN_BLOCK = {f: {"mlp.gate.weight": "router"} for f in MOE}
KEPT_IN_BLOCK["qwen2_moe"]["mlp.shared_expert_gate.weight"] = "shared-expert gate"


def windows(n=4, seqlen=24, seed=1):
    return torch.randint(3, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _is_weight_module(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D" or any(
        p.dim() == 3 for p in module.parameters(recurse=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_by_layer_replay_reproduces_the_full_model(family, device):
    model, w = tiny_model(family).to(device), windows()
    seen: dict[int, torch.Tensor] = {}
    layers = decoder_layers(model)

    def pre(i):
        return lambda _m, args, kwargs: seen.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).clone())

    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    last = []
    handles.append(layers[-1].register_forward_hook(
        lambda _m, _a, out: last.append((out[0] if isinstance(out, tuple) else out).clone())))
    with torch.no_grad():
        model(w.to(device), use_cache=False)
    for h in handles:
        h.remove()
    replay = Replay(model, w, batch_size=len(w))
    replay.start()
    for i in range(len(layers)):
        assert torch.equal(replay.inps, seen[i]), (family, i)
        replay.advance([(np.arange(len(w)), None)])
    assert torch.equal(replay.inps, last[0]), family


@pytest.mark.parametrize("family", FAMILIES)
def test_every_weight_is_pruned_or_kept_for_a_reason(family):
    model = tiny_model(family)
    inv = weight_inventory(model)
    names = param_names(model)
    layers = decoder_layers(model)
    assert len(all_prunable(model)) == PRUNED_PER_BLOCK[family] * len(layers)
    assert "other" not in inv["not_pruned"], inv["not_pruned"]
    # every weight module inside the blocks: pruned, or one of the family's stated exceptions
    params = dict(model.named_parameters())
    pruned = set(names.values())
    prefix = next(n for n, m in model.named_modules() if m is layers)
    for i, layer in enumerate(layers):
        for mname, module in layer.named_modules():
            if not _is_weight_module(module):
                continue
            for pname, p in module.named_parameters(recurse=False):
                if p.dim() < 2:
                    continue
                full = f"{prefix}.{i}.{mname}.{pname}"
                expected = KEPT_IN_BLOCK.get(family, {}).get(f"{mname}.{pname}")
                assert (full in pruned) == (expected is None), full
                if expected:
                    assert f"{prefix}.*.{mname}.{pname}" in inv["not_pruned"][expected]["names"]
    # every parameter of 2+ dimensions is counted exactly once; outside the blocks only embeddings and the head
    total = sum(p.numel() for p in params.values() if p.dim() >= 2)
    kept = sum(v["parameters"] for v in inv["not_pruned"].values())
    assert sum(v["parameters"] for v in inv["pruned"]["by_kind"].values()) + kept == total
    assert sum(params[n].numel() for n in pruned) == sum(v["parameters"] for v in inv["pruned"]["by_kind"].values())
    outside = {r for r in inv["not_pruned"] if r not in KEPT_IN_BLOCK.get(family, {}).values()}
    assert outside <= {"embedding", "lm head", "embedding (tied lm head)"}
    kinds = set(inv["pruned"]["by_kind"])
    assert kinds == ({"conv1d"} if family == "gpt2" else {"linear", "experts"} if family in MOE else {"linear"})


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_sparsity_of_every_pruned_matrix(family, device):
    model, w = tiny_model(family).to(device), windows()
    res = federated_prune(model, w, [np.arange(2), np.arange(2, 4)], spec=LocalSpec(Wanda(), 0.5, "row", 0, 2),
                          server_group="layer", progress=False)
    names = param_names(model)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for name, final in res.final.items():
        rows, cols = final.shape[-2:]
        for client in range(2):  # local Wanda: int(s * in) per output row (per expert)
            assert (res.client_masks.get(client, name).sum(-1) == cols // 2).all(), name
        per_matrix = final.reshape(-1, rows * cols).sum(-1)  # server: int(s * d) per matrix, per expert
        assert (per_matrix == rows * cols // 2).all(), name
    backup = apply_masks(model, res.final)
    try:  # the model's own parameters carry the zeros (GPT-2's Conv1D stores the transpose)
        for name, final in res.final.items():
            p = params[names[name]].detach().cpu()
            conv1d = type(modules[names[name].rsplit(".", 1)[0]]).__name__ == "Conv1D"  # stores (in, out)
            expected = final.transpose(-1, -2) if conv1d else final
            assert torch.equal(p == 0, expected), name
    finally:
        restore(model, backup)
    assert all(int((p == 0).sum()) == 0 for n, p in params.items() if n in names.values())  # restored


@pytest.mark.parametrize("family", MOE)
def test_expert_statistics_come_from_the_tokens_routed_to_it(family, device):
    model, w = tiny_model(family).to(device), windows(n=3)
    layer = decoder_layers(model)[0]
    moe_in = []
    h = layer.mlp.register_forward_pre_hook(lambda _m, args: moe_in.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(w.to(device), use_cache=False)
    h.remove()
    x = moe_in[0].double().cpu()  # the check runs in float64 on the CPU, whatever the device under test
    experts, k = layer.mlp.experts, model.config.num_experts_per_tok
    chosen = torch.topk(F.linear(x, layer.mlp.gate.weight.double().cpu()), k, dim=-1).indices  # the router's pick
    replay = Replay(model, w, batch_size=2)
    replay.start()
    stats = {n: s.cpu() for n, s in replay.statistics(Wanda(), groups=[np.arange(3)]).items()}
    E = experts.gate_up_proj.shape[0]
    assert stats["mlp.experts.gate_up_proj"].shape == (1, E, x.shape[-1])
    for e in range(E):
        xe = x[(chosen == e).any(-1)]
        gate, up = F.linear(xe, experts.gate_up_proj[e].double().cpu()).chunk(2, dim=-1)
        he = experts.act_fn(gate) * up
        torch.testing.assert_close(stats["mlp.experts.gate_up_proj"][0, e], xe.pow(2).sum(0), rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(stats["mlp.experts.down_proj"][0, e], he.pow(2).sum(0), rtol=1e-4, atol=1e-8)
    assert (stats["mlp.experts.gate_up_proj"].sum(-1) > 0).sum() >= 2  # the routing reached several experts


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral", "olmoe", "gpt2", "opt"])
def test_fedspallm_expands_every_matrix_and_every_expert_on_its_own(family, device):
    # MoE: each expert's matrix of a fused stack gets its own ceil(s d); GPT-2 (transposed Conv1D) and OPT
    # (flattened inputs): every plain matrix does
    model, w = tiny_model(family).to(device), windows()
    spec = FedSpaSpec(sparsity=0.5, batch_size=2, method=SparseGPT(update=True))
    res = fedspallm_prune(model, w, [np.arange(2), np.arange(2, 4)], spec=spec, progress=False)
    stacks = [n for n, m in res.masks.items() if m.dim() == 3]
    assert bool(stacks) == (family in MOE), stacks
    assert all(res.masks[n].shape[0] > 1 for n in stacks)
    for name, mask in res.masks.items():
        rows, cols = mask.shape[-2:]
        mask, weight = mask.cpu(), res.weights[name].cpu()
        assert (mask.reshape(-1, rows * cols).sum(-1) == (rows * cols + 1) // 2).all(), name  # ceil(s d) each
        assert torch.equal(weight == 0, mask | (weight == 0)), name


def test_a_block_with_nothing_to_prune_is_refused():
    with pytest.raises(UsageError, match="holds no weight secprune can prune"):
        prunable_matrices(nn.Sequential(nn.LayerNorm(8)))


@pytest.mark.parametrize("family", ["gpt2", "qwen2_moe"])
@pytest.mark.parametrize("algo", ["fedprllm", "fedspallm"])
def test_cli_run_summary_and_export_of_transposed_and_expert_weights(family, algo, client_files, tmp_path, device):
    import json

    from transformers import AutoModelForCausalLM

    from secprune.cli import main
    from secprune.masks import MaskSet

    from .test_cli import SMALL
    from .tiny_models import save_tiny

    folder, run, exported = save_tiny(family, tmp_path / family), tmp_path / "run", tmp_path / "export"
    assert main(["prune", "--model", str(folder), "--client-data", *client_files, *SMALL, "--baselines",
                 "--algorithm", algo, "--device", str(device), "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    kept = summary["model"]["not_pruned"]
    if family == "qwen2_moe":
        assert kept["router"]["names"] == ["model.layers.*.mlp.gate.weight"]
        assert kept["shared-expert gate"]["names"] == ["model.layers.*.mlp.shared_expert_gate.weight"]
        assert summary["model"]["pruned"]["experts"]["tensors"] == 4
    else:
        assert set(summary["model"]["pruned"]) == {"conv1d"}
    assert main(["export", "--run", str(run), "--out", str(exported), "--quiet"]) == 0
    state = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).state_dict()
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    masks = MaskSet.load(run / "final_mask.safetensors")
    for name in masks.names():
        mask, stored, orig = masks.get(0, name), state[name], dense[name]
        if family == "gpt2":  # Conv1D stores (in, out); masks are (out, in)
            stored, orig = stored.transpose(-1, -2), orig.transpose(-1, -2)
        assert torch.equal(stored == 0, mask | (orig == 0)), name
    for name in (n for n in state if n not in masks.names()):
        assert torch.equal(state[name], dense[name]), name  # routers, gates, embeddings, norms untouched


@pytest.mark.parametrize("family", ["gpt2", "qwen2_moe"])
def test_flower_clients_prune_these_families_bit_identically(family, federation, tmp_path):
    pytest.importorskip("flwr")
    from secprune.masks import MaskSet

    from .test_flower import distributed, same_masks, simulate
    from .tiny_models import save_tiny

    fed = {**federation, "model": save_tiny(family, tmp_path / family)}
    for algo in ("one-shot", "fedspallm"):
        reference = MaskSet.load(simulate(fed, algo, "none", tmp_path / f"sim-{algo}") / "final_mask.safetensors")
        run, _, _ = distributed(fed, algo, "none", tmp_path / algo)
        masks = run.strategy.final if algo != "fedspallm" else run.strategy.masks
        assert same_masks(reference, masks, param_names(run.model)), algo


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_perplexity_equals_the_full_logits(family, monkeypatch, device):
    import math

    from secprune import evaluate

    model, w = tiny_model(family).to(device), windows(n=3, seqlen=20).to(device)
    if family == "gemma2":
        model.config.final_logit_softcapping = 5.0  # make the post-processing matter
    with torch.no_grad():
        logits = model(w, use_cache=False).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
    monkeypatch.setattr(evaluate, "LOGIT_BUDGET", 7 * VOCAB)  # 7 tokens per chunk: several chunks per window
    got = evaluate.perplexity(model, w, batch_size=2, progress=False)
    assert model._secprune_chunked_ok
    assert got == pytest.approx(math.exp(float(nll) / w[:, 1:].numel()), rel=1e-5)


def test_chunked_head_check_never_holds_a_whole_windows_logits(monkeypatch):
    # prepare: windows longer than the check's probe; record every full-logits pass
    from secprune import evaluate

    model, w = tiny_model("llama"), windows(n=2, seqlen=3 * evaluate.CHECK_TOKENS)
    full_passes: list[tuple[int, ...]] = []
    full = evaluate._nll_full
    monkeypatch.setattr(evaluate, "_nll_full", lambda m, x: full_passes.append(tuple(x.shape)) or full(m, x))

    # execute
    evaluate.perplexity(model, w, progress=False)

    # assert: one full-logits pass, the check's, on one window's first CHECK_TOKENS tokens only
    assert model._secprune_chunked_ok
    assert full_passes == [(1, evaluate.CHECK_TOKENS)]


def test_perplexity_falls_back_to_full_logits_for_an_unknown_head(monkeypatch):
    from secprune import evaluate

    model, w = tiny_model("llama"), windows(n=2, seqlen=16)
    plain = type(model).forward

    def doubled(self, *a, **kw):  # a head post-processing the chunked path does not know
        out = plain(self, *a, **kw)
        out.logits = out.logits * 2
        return out

    monkeypatch.setattr(type(model), "forward", doubled)
    with torch.no_grad():
        logits = model(w).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
    got = evaluate.perplexity(model, w, progress=False)
    assert model._secprune_chunked_ok is False
    assert got == pytest.approx(float(torch.exp(nll / w[:, 1:].numel())), rel=1e-6)
