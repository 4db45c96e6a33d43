"""Windows start with <bos> for Gemma tokenizers only (secprune/data.py ``window_bos``)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from secprune import data
from tests.conftest import char_tokenizer


class GemmaTokenizer(PreTrainedTokenizerFast):  # stands in for transformers' Gemma tokenizer class
    pass


def gemma_like():
    tok = char_tokenizer()
    return GemmaTokenizer(tokenizer_object=tok.backend_tokenizer, unk_token="[UNK]", bos_token="[UNK]")


IDS = torch.arange(10, 1010)


def test_other_tokenizers_keep_the_raw_stream_windows():
    assert data.window_bos(char_tokenizer()) is None
    rng = np.random.default_rng(3)
    starts = np.random.default_rng(3).integers(0, IDS.numel() - 16, size=5)
    got = data.sample_windows(IDS, n=5, seqlen=16, rng=rng, bos=None)
    assert torch.equal(got, torch.stack([IDS[s:s + 16] for s in starts]))
    assert torch.equal(data.eval_windows(IDS, seqlen=100, max_windows=None), IDS.view(10, 100))


def test_gemma_windows_are_bos_then_text_at_the_same_offsets():
    bos = data.window_bos(gemma_like())
    assert bos == 0
    starts = np.random.default_rng(3).integers(0, IDS.numel() - 16, size=5)
    got = data.sample_windows(IDS, n=5, seqlen=16, rng=np.random.default_rng(3), bos=bos)
    assert got.shape == (5, 16) and torch.all(got[:, 0] == bos)
    assert torch.equal(got[:, 1:], torch.stack([IDS[s:s + 15] for s in starts]))
    ev = data.eval_windows(IDS, seqlen=101, max_windows=None, bos=bos)
    assert ev.shape == (10, 101) and torch.all(ev[:, 0] == bos)
    assert torch.equal(ev[:, 1:].reshape(-1), IDS)  # every text token once, in order
    assert data.eval_windows(IDS, seqlen=101, max_windows=3, bos=bos).shape == (3, 101)
