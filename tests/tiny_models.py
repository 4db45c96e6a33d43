"""Tiny random causal LMs of every family secprune supports, built from configs (no download)."""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 256
_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
_LLAMA_LIKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 128}
_MOE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "num_experts_per_tok": 2}


def _config(family: str):
    common = {"vocab_size": VOCAB, "use_cache": False, **_IDS}
    return {
        "llama": lambda: T.LlamaConfig(**_LLAMA_LIKE, **common),
        "mistral": lambda: T.MistralConfig(**_LLAMA_LIKE, sliding_window=16, **common),
        "qwen2": lambda: T.Qwen2Config(**_LLAMA_LIKE, **common),
        "qwen3": lambda: T.Qwen3Config(**_LLAMA_LIKE, head_dim=16, **common),
        "gemma2": lambda: T.Gemma2Config(**_LLAMA_LIKE, head_dim=16, sliding_window=16, **common),
        "gemma3": lambda: T.Gemma3TextConfig(**_LLAMA_LIKE, head_dim=16, sliding_window=16, **common),
        "phi": lambda: T.PhiConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   max_position_embeddings=128, **common),
        "phi3": lambda: T.Phi3Config(**_LLAMA_LIKE, **common),
        "opt": lambda: T.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                   max_position_embeddings=128, word_embed_proj_dim=64, **common),
        "gpt2": lambda: T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **common),
        "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=128, **common),
        "falcon": lambda: T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, **common),
        "mixtral": lambda: T.MixtralConfig(**_MOE, intermediate_size=96, num_local_experts=4, **common),
        "qwen2_moe": lambda: T.Qwen2MoeConfig(**_MOE, intermediate_size=128, moe_intermediate_size=32,
                                              shared_expert_intermediate_size=64, num_experts=4, **common),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(**_MOE, intermediate_size=128, moe_intermediate_size=32, head_dim=16,
                                              num_experts=4, **common),
        "olmoe": lambda: T.OlmoeConfig(**_MOE, intermediate_size=32, num_experts=4, **common),
    }[family]()


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi", "phi3", "opt", "gpt2", "gpt_neox",
            "falcon", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def tiny_model(family: str, *, seed: int = 0):
    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(_config(family)).eval()


def save_tiny(family: str, path, *, seed: int = 0):
    """A tiny random model of ``family`` saved as a Hugging Face folder with the character tokenizer."""
    from .conftest import char_tokenizer

    tiny_model(family, seed=seed).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
