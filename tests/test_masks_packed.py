"""PackedMasks: bit-packed storage that reads back every mask exactly, whatever its shape."""

import torch

from secprune.masks import PackedMasks


def test_packed_masks_read_back_exactly():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(7, 13, generator=g) < 0.5,  # 91 bits: not a whole number of bytes
             "experts": torch.rand(3, 5, 9, generator=g) < 0.3, "empty": torch.zeros(0, 4, dtype=torch.bool)}
    packed = PackedMasks(masks)
    assert list(packed) == list(masks) and len(packed) == 3
    for name, mask in masks.items():
        got = packed[name]
        assert got.dtype == torch.bool and got.shape == mask.shape and torch.equal(got, mask), name
    packed["a"] = ~masks["a"]
    assert torch.equal(packed["a"], ~masks["a"])
    del packed["empty"]
    assert "empty" not in packed and len(packed) == 2
