"""The centralized and local-only baselines are plain local pruning (FedPrLLM Table 1): the party's own
Wanda masks, ``int(s * row length)`` per row, never the server's layer-wide top-k on top of them."""

import json
import math

import numpy as np
import pytest

from secprune.cli import main
from secprune.fedprllm.driver import LocalSpec, federated_prune, local_prune
from secprune.methods import Wanda
from secprune.model import all_prunable

from .test_cli import SMALL
from .test_federated import reference_wanda_masks

SPARSITY = 0.3  # 0.3 x 64 and 0.3 x 128 are not whole numbers


def _row_wise(shapes, sparsity):
    """Fraction plain (row-wise) Wanda prunes: int(s * in) in every row of every matrix."""
    return sum(r * math.floor(sparsity * c) for r, c in shapes) / sum(r * c for r, c in shapes)


def test_local_prune_is_plain_wanda(model, windows):
    masks, weights = local_prune(model, windows, spec=LocalSpec(Wanda(), SPARSITY, "row", 0, 4), progress=False)
    ref = reference_wanda_masks(model, windows, sparsity=SPARSITY)
    assert weights is None and set(masks) == set(ref)
    for name, mask in masks.items():
        assert (mask.sum(1) == math.floor(SPARSITY * mask.shape[1])).all(), name
        assert (mask == ref[name]).float().mean() > 0.999, name  # float summation order may flip a near-tie
    # the old baseline (the one-client run's server top-k over the whole matrix) pruned weights no one chose
    old = federated_prune(model, windows, [np.arange(len(windows))], spec=LocalSpec(Wanda(), SPARSITY, "row", 0, 4),
                          progress=False).final
    extra = {n: int(old[n].sum() - masks[n].sum()) for n in masks}
    assert extra["layers.0.self_attn.q_proj"] == int(SPARSITY * 64 * 64) - 64 * math.floor(SPARSITY * 64)
    assert all((old[n] | masks[n]).sum() == old[n].sum() for n in masks)  # a superset of the client's own


@pytest.mark.parametrize("strategy", ["one-shot", "iterative"])
def test_cli_baselines_prune_exactly_what_plain_wanda_prunes(tiny_folder, client_files, tmp_path, strategy, device):
    from secprune.model import load_model

    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--sparsity",
                 str(SPARSITY), "--strategy", strategy, "--baselines", "centralized", "local-only",
                 "--device", str(device), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "summary.json").read_text())["results"]
    shapes = [tuple(m.weight.shape) for m in all_prunable(load_model(str(tiny_folder))[0]).values()]
    expected = _row_wise(shapes, SPARSITY)
    assert results["centralized"]["mask_sparsity"] == pytest.approx(expected, abs=1e-12)
    for client in results["local-only"]["per_client"]:
        assert client["mask_sparsity"] == pytest.approx(expected, abs=1e-12)
    layer_wide = sum(int(SPARSITY * r * c) for r, c in shapes) / sum(r * c for r, c in shapes)
    assert results["federated"]["mask_sparsity"] == pytest.approx(layer_wide, abs=1e-12)  # server: layer group
    assert layer_wide > expected
