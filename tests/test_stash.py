"""apply_masks prunes in place and parks the dense weights in an anonymous file; restore gives them back
bit for bit, for every kind of matrix (linear, GPT-2 Conv1D, fused experts) and dtype."""

import os
import tempfile

import pytest
import torch

from secprune.fedprllm.aggregate import pruned_weight
from secprune.model import all_prunable
from secprune.stash import WeightStash
from secprune.surgery import apply_masks, restore

from .tiny_models import tiny_model


def random_masks(model, *, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.weight.shape, generator=g) < 0.5 for n, m in all_prunable(model).items()}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_scales", [False, True])
def test_pruned_in_place_as_pruned_weight_and_restored_exactly(family, dtype, with_scales):
    # prepare: a tiny model of each matrix kind, random masks, random scales
    model = tiny_model(family).to(dtype)
    before, mats = snapshot(model), all_prunable(model)
    dense = {n: m.weight.clone() for n, m in mats.items()}
    masks = random_masks(model)
    scales = {n: 1 + torch.rand(m.shape) for n, m in dense.items()} if with_scales else None
    # execute
    backup = apply_masks(model, masks, scales=scales)
    pruned = {n: m.weight.clone() for n, m in mats.items()}
    restore(model, backup)
    # assert: the in-place result is the out-of-place formula, and the model comes back bit for bit
    for n in dense:
        want = pruned_weight(dense[n], masks[n], None if scales is None else scales[n])
        assert torch.equal(pruned[n], want), n
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(backup) == 0


def test_a_failing_apply_leaves_the_model_dense():
    model = tiny_model("llama")
    before = snapshot(model)
    masks = random_masks(model)
    masks["layers.99.mlp.up_proj"] = torch.ones(1, dtype=torch.bool)  # not a matrix of this model
    with pytest.raises(KeyError):
        apply_masks(model, masks)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_stash_is_never_named_in_a_folder():
    folder = tempfile.gettempdir()
    listed = set(os.listdir(folder))
    stash = WeightStash()
    stash.put("w", torch.arange(12.0).reshape(3, 4))
    assert set(os.listdir(folder)) == listed
    out = torch.zeros(3, 4)
    stash.take("w", out)
    stash.close()
    assert torch.equal(out, torch.arange(12.0).reshape(3, 4))


def test_the_stash_refuses_a_tensor_of_another_shape():
    stash = WeightStash()
    stash.put("w", torch.ones(3, 4))
    with pytest.raises(ValueError, match="w: stashed"):
        stash.take("w", torch.zeros(4, 3))
