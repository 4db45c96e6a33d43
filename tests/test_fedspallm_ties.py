"""Eq. 7's tie-break: how many expansion picks it decides, the random alternative, and the secure sums'
error after masking (the quantized |W_g| decides those ties)."""

import numpy as np
import torch

from secprune.fedspallm.aggregate import expand_mask, tie_decided
from secprune.fedspallm.driver import FedSpaSpec, fedspallm_prune
from secprune.methods import SparseGPT

from .conftest import tiny_llama


def test_tie_decided_counts_the_partially_taken_level():
    counts = torch.tensor([[4, 4, 3, 3, 3, 2, 2, 1, 0, 0]])
    mag = torch.tensor([[0.0, 0.0, 0.3, 0.1, 0.2, 0.5, 0.4, 0.9, 1.0, 1.0]])
    # 50%: ceil(5) - 2 all-pruned = 3 picks, the whole C = 3 level: no tie decides anything
    full = expand_mask(counts=counts, n_clients=4, sparsity=0.5, magnitude=mag)
    assert full[0].tolist() == [True] * 5 + [False] * 5
    assert tie_decided(counts=counts, n_clients=4, mask=full) == 0
    # 40%: 2 of the 3 entries with C = 3, the two smaller |W_g| (0.1, 0.2): both picks decided by the tie-break
    part = expand_mask(counts=counts, n_clients=4, sparsity=0.4, magnitude=mag)
    assert part[0].tolist() == [True, True, False, True, True] + [False] * 5
    assert tie_decided(counts=counts, n_clients=4, mask=part) == 2
    # 60%: the C = 3 level whole, then 1 of the 2 with C = 2 (|W_g| 0.4 beats 0.5): 1 decided
    more = expand_mask(counts=counts, n_clients=4, sparsity=0.6, magnitude=mag)
    assert more[0].tolist() == [True] * 5 + [False, True] + [False] * 3
    assert tie_decided(counts=counts, n_clients=4, mask=more) == 1
    stacked = torch.stack([counts, counts])  # an expert stack: summed over experts
    assert tie_decided(counts=stacked, n_clients=4, mask=torch.stack([part, more])) == 3


def _run(**kw):
    model, g = tiny_llama(), torch.Generator().manual_seed(3)
    windows = torch.randint(0, 256, (8, 24), generator=g)
    spec = FedSpaSpec(sparsity=0.5, batch_size=4, method=SparseGPT(update=True), **kw.pop("spec", {}))
    return fedspallm_prune(model, windows, [np.arange(i * 2, i * 2 + 2) for i in range(4)], spec=spec,
                           progress=False, **kw)


def test_random_tie_break_changes_only_the_tied_picks():
    by_magnitude, random_ties = _run(), _run(spec={"magnitude_ties": False})
    decided = by_magnitude.rounds[0]["expansion_tie_decided_total"]
    assert 0 < decided <= by_magnitude.rounds[0]["expansion_k_total"]
    changed = 0
    for name, mask in by_magnitude.masks.items():
        other = random_ties.masks[name]
        assert int(other.sum()) == int(mask.sum())  # the same ceil(s d)
        counts = by_magnitude.counts[name]
        assert torch.equal(counts, random_ties.counts[name])
        changed += int((mask != other).sum()) // 2
        assert ((mask != other) <= (counts < 4)).all()  # never an entry every client pruned
    assert 0 < changed <= decided


def test_secure_error_after_masking_is_reported_against_the_float_aggregation():
    plain = _run()
    secure = _run(secure="none", spec={"fixed_point_bits": 6})  # coarse: ties on |W_g| flip
    flips = sum(int((secure.masks[n] != plain.masks[n]).sum()) for n in plain.masks)
    after = max(float((secure.weights[n].double() - plain.weights[n].double()).abs().max()) for n in plain.masks)
    assert secure.secagg["mask_flips"] == flips > 0
    assert secure.secagg["max_abs_error_after_masking"] == after
    assert after > secure.secagg["max_abs_error"]  # a flipped entry costs a whole weight, not half a step
