"""A tiny random LLaMA and planted-leakage calibration data, for tests and smoke runs (no downloads)."""

from __future__ import annotations

import numpy as np
import torch


def tiny_llama(seed: int = 0, *, vocab: int = 256, hidden: int = 64, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    model.config.use_cache = False
    with torch.no_grad():  # a non-trivial norm gain, as trained models have
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return model


def zipf_windows(n: int, seqlen: int, *, vocab: int, rng: np.random.Generator, exclude: tuple[int, ...] = (),
                 a: float = 1.1) -> torch.Tensor:
    """Windows of tokens drawn i.i.d. from a Zipf-like law over ``vocab`` (``exclude`` never drawn)."""
    p = 1.0 / np.arange(1, vocab + 1) ** a
    p[list(exclude)] = 0.0
    p /= p.sum()
    return torch.from_numpy(rng.choice(vocab, size=(n, seqlen), p=p)).long()


class ByteTokenizer:
    """A tokenizer for the tiny model: one token per byte (digits are single tokens), no download."""

    class _Out:
        def __init__(self, ids: list[int]) -> None:
            self.input_ids = ids

    def __init__(self, vocab: int = 256) -> None:
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = False) -> ByteTokenizer._Out:
        return self._Out([b % self.vocab for b in text.encode()])

    def __len__(self) -> int:
        return self.vocab

    def decode(self, ids) -> str:
        return bytes(int(i) % 256 for i in ids).decode(errors="replace")


def token_frequencies(windows: torch.Tensor, vocab: int) -> np.ndarray:
    return np.bincount(windows.reshape(-1).numpy(), minlength=vocab).astype(np.float64)


def synthetic_inputs(*, method: str = "wanda", planted_token: int = 200, clients: int = 4, per_client: int = 2,
                     seqlen: int = 32, population: int = 40, seed: int = 0):
    """AuditInputs for a tiny random LLaMA where client 0's windows are one repeated rare token."""
    from secprune.audits.runner import AuditInputs
    from secprune.fedprllm.driver import LocalSpec, federated_prune
    from secprune.methods import make_method

    model = tiny_llama(seed)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(seed)
    others = zipf_windows((clients - 1) * per_client, seqlen, vocab=vocab, rng=rng, exclude=(planted_token,))
    planted = torch.full((per_client, seqlen), planted_token, dtype=torch.long)
    windows = torch.cat([planted, others])
    parts = [np.arange(i * per_client, (i + 1) * per_client) for i in range(clients)]
    pop = zipf_windows(population, seqlen, vocab=vocab, rng=rng, exclude=(planted_token,))
    spec = LocalSpec(make_method(method), 0.5, "row", seed, 8)
    res = federated_prune(model, windows, parts, spec=spec, progress=False)
    freq = token_frequencies(pop, vocab) + 1.0  # the attacker's prior covers the vocabulary
    ev = zipf_windows(2, seqlen, vocab=vocab, rng=rng)
    return AuditInputs(model=model, windows=windows, parts=parts, client_masks=res.client_masks, population=pop,
                       vocab_freq=freq, eval_windows=ev, method=method, seed=seed, tokenizer=ByteTokenizer(vocab),
                       decode=lambda ids: " ".join(f"<{i}>" for i in ids),
                       run_info={"model": "tiny-random-llama", "synthetic": True, "planted_token": planted_token})
