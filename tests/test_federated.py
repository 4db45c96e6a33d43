"""FedPrLLM pipeline on a tiny random LLaMA, checked against independent computations."""

import numpy as np
import pytest
import torch

from secprune.fedprllm.aggregate import count_dtype, final_mask, pruned_weight, scale_factor
from secprune.fedprllm.driver import LocalSpec, federated_prune
from secprune.methods import Magnitude, SparseGPT, Wanda
from secprune.model import all_prunable, decoder_layers, prunable_linears
from secprune.surgery import apply_masks, restore
from secprune.topk import priority

from .conftest import tiny_llama


def run(model, windows, parts, method=None, **kw):
    spec = LocalSpec(method or Wanda(), kw.pop("sparsity", 0.5), kw.pop("local_group", "row"), kw.pop("seed", 0), 3)
    return federated_prune(model, windows, parts, spec=spec, progress=False, **kw)


def reference_wanda_masks(model, windows, *, sparsity=0.5, seed=0, upstream=None):
    """Wanda done the slow, obvious way: full-model forwards with earlier layers already pruned (by
    this client's own masks, or by ``upstream`` masks where given), activations captured by hooks,
    ||X_j|| computed from them, and a numpy lexsort per row."""
    masks = {}
    for li, layer in enumerate(decoder_layers(model)):
        captured = {}
        hooks = [lin.module.register_forward_hook(
            lambda _m, inp, _o, n=n, c=captured: c.setdefault(n, []).append(inp[0]))
            for n, lin in prunable_linears(layer).items()]
        backup = apply_masks(model, {**masks, **(upstream or {})})
        with torch.no_grad():
            model(windows.to(model.device))
        restore(model, backup)
        for h in hooks:
            h.remove()
        for n, lin in prunable_linears(layer).items():
            x = torch.cat(captured[n]).reshape(-1, lin.in_features).double()
            norm = x.pow(2).sum(0).sqrt()
            score = (lin.weight.detach().abs().double() * norm).float().cpu().numpy()
            prio = priority(shape=tuple(lin.weight.shape), group="row", seed=seed, tag=f"local:{li}.{n}")
            prio = prio.expand_as(lin.weight).numpy()
            mask = np.zeros(score.shape, bool)
            k = int(score.shape[1] * sparsity)
            for r in range(score.shape[0]):
                mask[r, np.lexsort((prio[r], score[r]))[:k]] = True
            masks[f"layers.{li}.{n}"] = torch.from_numpy(mask)
    return masks


def test_wanda_masks_equal_formula_on_captured_activations(model, windows):
    res = run(model, windows, [np.arange(len(windows))])
    ref = reference_wanda_masks(model, windows)
    assert set(ref) == set(res.final)
    for name, mask in ref.items():
        agree = (res.client_masks.get(0, name) == mask).float().mean().item()
        assert agree > 0.999, name  # float summation order may flip a rare near-tie
        assert torch.equal(res.final[name], res.client_masks.get(0, name))


@pytest.mark.parametrize("local_group", ["row", "layer", "column"])
@pytest.mark.parametrize("server_group", ["row", "layer", "column"])
def test_exactly_k_pruned_per_group(model, windows, local_group, server_group):
    res = run(model, windows, [np.arange(4), np.arange(4, 8)], local_group=local_group, server_group=server_group)
    for masks, group in [(res.client_masks.party(1), local_group), (res.final, server_group)]:
        for mask in masks.values():
            rows, cols = mask.shape
            if group == "row":
                assert (mask.sum(1) == cols // 2).all()
            elif group == "column":
                assert (mask.sum(0) == rows // 2).all()
            else:
                assert mask.sum() == rows * cols // 2


def test_one_shot_identical_client_data_equals_centralized(model, windows):
    m = 3
    copies = torch.cat([windows] * m)
    parts = [np.arange(i * len(windows), (i + 1) * len(windows)) for i in range(m)]
    fed = run(model, copies, parts, strategy="one-shot")
    cen = run(model, windows, [np.arange(len(windows))])
    for name in cen.final:
        assert torch.equal(fed.final[name], cen.final[name])
        assert torch.equal(fed.counts[name], m * cen.final[name].long())


def test_iterative_one_client_equals_centralized(model, windows):
    it = run(model, windows, [np.arange(len(windows))], strategy="iterative", server_group="row")
    cen = run(model, windows, [np.arange(len(windows))])
    for name in cen.final:
        assert torch.equal(it.final[name], cen.final[name])


def test_one_shot_client_masks_are_standalone_masks(device):
    # In one-shot, a client's later layers are computed from its OWN pruned layers: its masks equal a
    # stand-alone (centralized) run on its windows alone. Needs >1 layer to mean anything.
    model = tiny_llama(layers=3).to(device)
    w = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(7))
    fed = run(model, w, [np.arange(3), np.arange(3, 6)])
    alone = run(model, w[3:], [np.arange(3)])
    for name in alone.final:
        assert torch.equal(fed.client_masks.get(1, name), alone.final[name])


def test_iterative_clients_continue_from_global_layer(device):
    model = tiny_llama(layers=3).to(device)
    w = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(7))
    parts = [np.arange(3), np.arange(3, 6)]
    it = run(model, w, parts, strategy="iterative")
    one = run(model, w, parts, strategy="one-shot")
    layer0 = [n for n in it.final if n.startswith("layers.0.")]
    later = [n for n in it.final if n.startswith("layers.2.")]
    assert all(torch.equal(it.final[n], one.final[n]) for n in layer0)  # same inputs at layer 0
    # at later layers client 1's inputs differ (global vs own pruned layers), so its masks differ
    assert any(not torch.equal(it.client_masks.get(1, n), one.client_masks.get(1, n)) for n in later)
    # and they equal a direct computation with the global layer-0/1 masks applied
    ref = reference_wanda_masks(model, w[3:], upstream={n: it.final[n] for n in it.final
                                                         if not n.startswith("layers.2.")})
    for n in later:
        assert (it.client_masks.get(1, n) == ref[n]).float().mean() > 0.999


def test_counts_are_sums_of_client_masks(model, windows):
    parts = [np.arange(0, 3), np.arange(3, 5), np.arange(5, 8)]
    res = run(model, windows, parts)
    for name, counts in res.counts.items():
        expected = sum(res.client_masks.get(i, name).long() for i in range(3))
        assert torch.equal(counts, expected)
        assert torch.equal(res.final[name], final_mask(counts, sparsity=0.5, group="layer", seed=0, name=name))


def test_count_dtype_never_overflows():
    assert count_dtype(255) == np.uint8 and count_dtype(256) == np.uint16
    assert count_dtype(70000) == np.uint32
    n = 300
    counts = np.zeros(5, count_dtype(n))
    for _ in range(n):
        counts += np.ones(5, np.uint8)
    assert (counts == n).all()


def test_scaling_formula(model, windows):
    parts = [np.arange(0, 4), np.arange(4, 8)]
    res = run(model, windows, parts)
    name = next(iter(res.final))
    w = all_prunable(model)[name].weight.detach().to("cpu", copy=True)
    scales = {n: scale_factor(c, 2) for n, c in res.counts.items()}
    backup = apply_masks(model, res.final, scales=scales)
    got = all_prunable(model)[name].weight.detach().to("cpu", copy=True)
    restore(model, backup)
    m_hat = res.counts[name].float()
    expected = w * (1 - res.final[name].float()) * (2 - m_hat) / 2
    assert torch.allclose(got, expected)
    assert torch.equal(all_prunable(model)[name].weight.cpu(), w)  # restore really restores
    assert torch.equal(pruned_weight(w, res.final[name]), w * ~res.final[name])


def test_same_seed_same_masks_different_seed_can_differ(model, windows):
    parts = [np.arange(4), np.arange(4, 8)]
    a, b = run(model, windows, parts, seed=3), run(model, windows, parts, seed=3)
    assert all(torch.equal(a.final[n], b.final[n]) for n in a.final)
    # server counts of 2 clients tie massively: another seed breaks ties differently
    c = run(model, windows, parts, seed=4)
    assert any(not torch.equal(a.final[n], c.final[n]) for n in a.final)


def test_pruned_forward_really_uses_the_mask(model, windows):
    res = run(model, windows, [np.arange(8)])
    with torch.no_grad():
        dense = model(windows.to(model.device)).logits
        backup = apply_masks(model, res.final)
        pruned = model(windows.to(model.device)).logits
        zeros = sum(int((lin.weight == 0).sum()) for lin in all_prunable(model).values())
        restore(model, backup)
        # independent: zero the weights by hand on a fresh copy
        ref = tiny_llama().to(model.device)
        for name, lin in all_prunable(ref).items():
            lin.weight.data[res.final[name].to(model.device)] = 0
        manual = ref(windows.to(model.device)).logits
    assert zeros == sum(int(m.sum()) for m in res.final.values())
    assert not torch.allclose(dense, pruned)
    assert torch.allclose(pruned, manual, atol=1e-5)


def test_magnitude_masks_ignore_data(model, windows):
    a = run(model, windows[:4], [np.arange(4)], method=Magnitude())
    b = run(model, windows[4:], [np.arange(4)], method=Magnitude())
    assert all(torch.equal(a.final[n], b.final[n]) for n in a.final)
    name = "layers.0.mlp.down_proj"
    w = all_prunable(model)[name].weight.abs().cpu()
    kept_min = w[~a.final[name]].view(w.shape[0], -1).min(1).values
    pruned_max = w[a.final[name]].view(w.shape[0], -1).max(1).values
    assert (kept_min >= pruned_max).all()


def test_sparsegpt_score_matches_direct_hessian_formula(model, windows):
    res = run(model, windows, [np.arange(8)], method=SparseGPT(update=False))
    layer = decoder_layers(model)[0]
    lin = layer.self_attn.q_proj
    xs = []
    h = lin.register_forward_hook(lambda _m, inp, _o: xs.append(inp[0]))
    with torch.no_grad():
        model(windows.to(model.device))
    h.remove()
    x = torch.cat(xs).reshape(-1, 64).double().cpu()
    H = x.T @ x
    H += 0.01 * H.diag().mean() * torch.eye(64, dtype=torch.float64)
    d = torch.linalg.cholesky(torch.linalg.inv(H), upper=True).diag()
    score = (lin.weight.detach().double().cpu() ** 2 / d ** 2).numpy()
    expected = score <= np.median(score, axis=1, keepdims=True)  # 32 of 64 per row, no ties in floats
    assert (res.final["layers.0.self_attn.q_proj"].numpy() == expected).mean() > 0.99


def test_sparsegpt_update_reduces_reconstruction_error():
    torch.manual_seed(0)
    W = torch.randn(16, 256)
    X = torch.randn(512, 256) @ torch.randn(256, 256) * 0.1  # correlated inputs
    H = X.T @ X
    prio = priority(shape=(16, 256), group="row", seed=0, tag="u")
    upd = SparseGPT(update=True).prune(W, H, sparsity=0.5, group="row", prio=prio)
    plain = pruned_weight(W, upd.mask)
    err_update = (X @ upd.weight.T - X @ W.T).norm()
    err_plain = (X @ plain.T - X @ W.T).norm()
    assert (upd.weight[upd.mask] == 0).all() and (upd.mask.sum(1) == 128).all()
    assert err_update < 0.8 * err_plain


@pytest.mark.parametrize("strategy", ["one-shot", "iterative"])
def test_checkpoint_resumes_to_same_result(model, windows, tmp_path, strategy):
    parts = [np.arange(4), np.arange(4, 8)]
    full = run(model, windows, parts, strategy=strategy)
    ckpt = tmp_path / "ck"

    calls = []

    def crash(*_args, **_kwargs):  # call 1 is the kwargs capture; call 2 is layer 1's own pass
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
    handle = decoder_layers(model)[1].register_forward_pre_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        run(model, windows, parts, checkpoint=ckpt, strategy=strategy)
    handle.remove()
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert state["step"] == 1  # layer 0 was finished and saved
    for lin in all_prunable(model).values():  # the crash left layer 0 restored? it must have been
        assert (lin.weight != 0).float().mean() > 0.99
    resumed = run(model, windows, parts, checkpoint=ckpt, strategy=strategy)
    assert all(torch.equal(full.final[n], resumed.final[n]) for n in full.final)
    assert all(torch.equal(full.counts[n], resumed.counts[n]) for n in full.counts)
    fs, rs = full.secagg, resumed.secagg
    # every byte sent before the crash is still counted (the plaintext backend has no setup messages) ...
    assert rs["sent"] == fs["sent"] and rs["received"] == fs["received"] and rs["entries"] == fs["entries"]
    # ... and the resumed run honestly counts the new session (a new key agreement) it had to open
    assert rs["rounds"] == fs["rounds"] + 1 and set(rs["per_round"]) == {"model", "model#2"}


def test_generic_layers_gemma3_replays_per_layer_masks_and_rope():
    # Gemma-3 alternates sliding-window and global attention (different masks and rotary bases per layer):
    # layer-by-layer replay must reproduce the full model's activations, so masks equal the reference.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128,
                           sliding_window=4, use_cache=False,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    model = Gemma3ForCausalLM(cfg).eval()
    w = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    res = run(model, w, [np.arange(4)])
    ref = reference_wanda_masks(model, w)
    assert len(ref) == 3 * 7
    for name, mask in ref.items():
        assert (res.final[name] == mask).float().mean() > 0.999, name


@pytest.mark.parametrize("strategy", ["one-shot", "iterative"])
def test_dropping_counts_changes_no_mask(model, windows, strategy):
    # the server may forget each layer's counts once its final mask is chosen (run.py does, without scaling)
    parts = [np.arange(4), np.arange(4, 8)]
    kept = run(model, windows, parts, strategy=strategy)
    dropped = run(model, windows, parts, strategy=strategy, keep_counts=False)
    assert dropped.counts == {} and set(kept.counts) == set(kept.final)
    assert set(dropped.final) == set(kept.final)
    assert all(torch.equal(dropped.final[n], kept.final[n]) for n in kept.final)
    scaled = run(model, windows, parts, strategy=strategy, keep_counts=False, scaling=True)
    assert set(scaled.counts) == set(kept.final)  # scaling needs them: kept whatever keep_counts says


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pruned_weight_is_masked_fill_bit_for_bit(dtype):
    # Pruned entries are +0.0 (never -0.0), kept entries untouched, also when some weights are not finite
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 48, generator=g).to(dtype)
    mask = torch.rand(64, 48, generator=g) < 0.5
    mask[:2, :2] = torch.eye(2, dtype=torch.bool)  # the inf and -inf below are pruned, the nan at (2, 2) kept
    mask[2, 2] = False
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    for weight in (w, w.clone().index_put_((torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])),
                                           torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=dtype))):
        want = weight.masked_fill(mask, 0.0)
        assert torch.equal(pruned_weight(weight, mask).view(bits), want.view(bits))


class _Shifter:
    """A malicious client's masking: +1 on one entry of its masked upload (the sum stays in range)."""

    @staticmethod
    def make(shift, position):
        from secprune.secagg.pairwise_client import PairwiseClient
        from secprune.secagg.ring import ring_mask

        class Shifter(PairwiseClient):
            def _masked_chunk(self, x, keys, stream_offset):
                y = super()._masked_chunk(x, keys, stream_offset)
                if self.id == 2 and stream_offset <= position < stream_offset + y.size:
                    y[position - stream_offset] = (int(y[position - stream_offset]) + shift) & ring_mask(self.cfg.bits)
                return y
        return Shifter


@pytest.mark.parametrize("shift", [1, -3, 5, 12])  # 5 and 12 wrap to -3 and +4 modulo 8
def test_a_client_shifting_one_vote_is_refused_by_the_group_totals(model, windows, shift):
    """The issue's +5 / -3 on one entry: each pruned-mask group must sum to voters x k; a single shifted entry
    breaks its row's total, and the server refuses the sum (inside the range check's bounds)."""
    from secprune.secagg.errors import ProtocolError
    from secprune.secagg.pairwise import PairwiseSum

    parts = [np.arange(i, 8, 4) for i in range(4)]
    honest = run(model, windows, parts, summer=PairwiseSum(n_clients=4, colluders=0))
    counts = honest.counts["layers.0.self_attn.q_proj"].reshape(-1)  # the first matrix of the epoch
    # an entry where the shifted sum, modulo the ring (2^3), stays inside [0, 4]: the range check alone accepts it
    position = int(torch.nonzero((counts + shift) % 8 <= 4)[0])
    summer = PairwiseSum(n_clients=4, colluders=0, client_class=_Shifter.make(shift, position))
    with pytest.raises(ProtocolError, match=r"layers.0.self_attn.q_proj: 1 row groups of the summed masks do not "
                                            r"hold 4 x \d+ votes .*malformed mask"):
        run(model, windows, parts, summer=summer)


def _colluding(base):
    """Clients 1 and 2 collude on the first matrix: 1 prunes one entry more in row 0 (j1), 2 one fewer (j2), so
    every row of the sum still holds voters x k votes while one vote moved from j2 to j1."""

    class Colluding(base):
        def _sum_matrix(self, key, vectors, rule=None):
            if key == "layers.0.self_attn.q_proj":
                vectors = [v.copy() for v in vectors]
                cols = 64  # the tiny model's hidden size: row 0 is the first 64 entries
                j1 = int(np.flatnonzero(vectors[1][:cols] == 0)[0])
                j2 = next(int(j) for j in np.flatnonzero(vectors[2][:cols] == 1) if j != j1)
                vectors[1][j1], vectors[2][j2] = 1, 0
            return super()._sum_matrix(key, vectors, rule)
    return Colluding


def test_compensating_colluders_pass_the_group_totals_but_not_he_validation(model, windows):
    """Group totals see the sum only: two colluders' compensating changes pass them and move a vote.  The he
    backend checks each client's input against the strategy's rule (exactly k pruned per row) and names both."""
    from secprune.secagg.errors import SecAggAbortError
    from secprune.secagg.he import HESum
    from secprune.secagg.plain import PlainSum

    parts = [np.arange(i, 8, 4) for i in range(4)]
    name = "layers.0.self_attn.q_proj"
    assert tuple(decoder_layers(model)[0].self_attn.q_proj.weight.shape)[1] == 64
    honest = run(model, windows, parts, summer=PlainSum(n_clients=4))
    forged = run(model, windows, parts, summer=_colluding(PlainSum)(n_clients=4))
    diff = (forged.counts[name].to(torch.int64) - honest.counts[name].to(torch.int64)).reshape(-1)
    assert sorted(diff[diff != 0].tolist()) == [-1, 1] and int(diff.sum()) == 0  # one vote moved, totals kept
    # 2 of 4 left is below the floor of 3 contributors: the round aborts and names both
    with pytest.raises(SecAggAbortError, match=r"inputs rejected by validation: client 1 \(.*q_proj.*\); client 2 "):
        run(model, windows, parts, summer=_colluding(HESum)(n_clients=4, colluders=0))


@pytest.mark.parametrize("method", [Wanda(), Magnitude(), SparseGPT(), SparseGPT(update=True)],
                         ids=["wanda", "magnitude", "sparsegpt", "sparsegpt-update"])
def test_pruned_per_group_is_what_each_method_really_prunes(method):
    """The count the server's group totals and the he input rule rely on, against the masks themselves: a matrix
    of 300 columns spans three SparseGPT blocks, whose per-block selections prune 208 of a row at 0.7, not 210."""
    torch.manual_seed(0)
    weight, x = torch.randn(12, 300), torch.randn(1, 400, 300)
    stats = method.new_stats(n_clients=1, in_features=300, device=torch.device("cpu"))
    if stats is not None:
        method.accumulate(stats, x, torch.zeros(1, dtype=torch.long))
        stats = stats[0]
    dims = {"row": (1,), "column": (0,), "layer": (0, 1)}
    for group in ("row", "column", "layer"):
        for sparsity in (0.5, 0.7):
            prio = priority(shape=(12, 300), group=group, seed=0, tag="t")
            mask = method.prune(weight, stats, sparsity=sparsity, group=group, prio=prio).mask
            k = method.pruned_per_group(shape=(12, 300), group=group, sparsity=sparsity)
            assert set(mask.sum(dim=dims[group]).reshape(-1).tolist()) == {k}, (group, sparsity)
