"""Loading causal LMs and finding what to prune without assuming LLaMA names.

The built-in models (secprune/models_registry.py) are 4-bit GGUF checkpoints shipped in registry packages:
SmolLM2-135M (the default), Gemma-3-270M, Qwen2.5-Coder-0.5B and -1.5B. Each is checked (sha256), joined
from its parts where it is split, and converted once to safetensors in the cache (``secprune setup``);
any Hugging Face causal-LM folder works too.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from secprune.errors import UsageError
from secprune.models_registry import DEFAULT_MODEL, MODELS

__all__ = ["UsageError"]

BUILTIN_MODELS = MODELS  # name -> BuiltinModel (secprune/models_registry.py)


def cache_dir() -> Path:
    return Path(os.environ.get("SECPRUNE_CACHE", Path.home() / ".cache" / "secprune"))


def builtin_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _converted(path: Path) -> bool:
    return (path / "config.json").exists() and any((path / f).exists() for f in WEIGHT_FILES)


def convert_builtin(name: str = DEFAULT_MODEL) -> Path:
    """Check the packaged GGUF (joining its parts in order), dequantize it once and cache it as safetensors.

    The joined GGUF is a temporary file in the cache, deleted once converted; ``secprune_source.json`` in the
    cached folder records the GGUF's sha256 and quantization. Reloading the cache takes about a second.
    """
    from secprune.gguf_assets import gguf_file
    from secprune.gguf_convert import convert_gguf

    if name not in BUILTIN_MODELS:
        raise UsageError(f"--model: {name!r} is not a built-in model ({', '.join(BUILTIN_MODELS)})")
    out = builtin_model_dir(name)
    if _converted(out):
        return out
    spec = BUILTIN_MODELS[name]
    work = cache_dir() / "gguf"
    path, temporary = gguf_file(name, work)
    try:
        convert_gguf(path, out, extra={"model": name, "title": spec.title, "sha256": spec.sha256,
                                       "quant": spec.quant, "weights": spec.weights, "packages": list(spec.pip)})
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    return out


def resolve_model_path(model: str) -> Path:
    if model in BUILTIN_MODELS:
        path = builtin_model_dir(model)
        return path if _converted(path) else convert_builtin(model)
    path = Path(model)
    if not (path / "config.json").exists():
        raise UsageError(f"--model: {model!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
                         "nor a folder with config.json")
    return path


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def max_context(config) -> int | None:
    """The longest sequence the model's position scheme supports, when its config says so."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def inspect_model(model: str):
    """(folder, config) of a model, checked before any weights are read: a causal LM with weights."""
    from transformers import AutoConfig

    path = resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--model: {path}/config.json cannot be read ({str(exc).splitlines()[0]})") from None
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        raise UsageError(f"--model: {path} holds a {archs[0]} checkpoint, not a causal LM "
                         f"(expected an architecture ending in {' or '.join(CAUSAL_SUFFIXES)})")
    if getattr(config, "is_encoder_decoder", False):
        raise UsageError(f"--model: {path} is an encoder-decoder model ({type(config).__name__}); expected a "
                         "decoder-only causal LM")
    if not any((path / f).exists() for f in WEIGHT_FILES):
        raise UsageError(f"--model: {path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    return path, config


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise UsageError(f"--model: {path} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"--model: {path} has no usable tokenizer ({str(exc).splitlines()[0][:120]})") from None
    if tok is None or isinstance(tok, bool):
        raise UsageError(f"--model: {path} has no tokenizer files (tokenizer.json, tokenizer.model, ...)")
    return tok


def load_model(model: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Return (model, tokenizer) for a built-in name or a Hugging Face causal-LM folder."""
    path, config = inspect_model(model)
    tok = load_tokenizer(path)
    return load_lm(path, config, device=device, dtype=dtype), tok


def load_lm(path: Path, config, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The causal LM in ``path`` (checked by :func:`inspect_model`), every weight read from the checkpoint."""
    from transformers import AutoModelForCausalLM

    try:
        lm, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except ValueError as exc:
        raise UsageError(f"--model: {path} has no causal-LM head ({type(config).__name__})") from exc
    except OSError as exc:
        raise UsageError(f"--model: {path}: weights cannot be read ({str(exc).splitlines()[0][:120]})") from None
    tied = set(getattr(lm, "_tied_weights_keys", None) or [])
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    if missing:
        raise UsageError(f"--model: {path}: {len(missing)} weights of {type(lm).__name__} are missing from the "
                         f"checkpoint (e.g. {missing[0]}): not a causal-LM checkpoint of this architecture")
    lm.config.use_cache = False
    return lm.eval().to(device)


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


def param_names(model: nn.Module) -> dict[str, str]:
    """Our matrix names ('layers.3.mlp.up_proj') -> the model's own parameter names
    ('model.layers.3.mlp.up_proj.weight'), as ``state_dict`` and ``from_pretrained`` know them."""
    stack = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is stack)
    return {name: f"{prefix}.{name.split('.', 1)[1]}.weight" for name in all_prunable(model)}
