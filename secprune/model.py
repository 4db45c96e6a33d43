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
from secprune.matrices import Matrix, block_matrices
from secprune.models_registry import DEFAULT_MODEL, MODELS

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


def prunable_matrices(layer: nn.Module) -> dict[str, Matrix]:
    """Every prunable matrix of one decoder block by its name inside the block ('self_attn.q_proj',
    'mlp.experts.down_proj'): see :mod:`secprune.matrices` for what is pruned and what is not."""
    found, _ = block_matrices(layer, experts=block_experts(layer))
    if not found:
        raise UsageError(f"--model: decoder block {type(layer).__name__} holds no weight secprune can prune "
                         "(nn.Linear, Conv1D or fused experts)")
    return found


prunable_linears = prunable_matrices  # the name the drivers have always used


def block_experts(layer: nn.Module) -> int:
    """Routed experts of a block (0 for a dense block), read from its MoE modules."""
    counts = [getattr(m, key) for m in layer.modules() for key in ("num_experts", "num_local_experts")
              if isinstance(getattr(m, key, None), int)]
    return max(counts, default=0)


def all_prunable(model: nn.Module) -> dict[str, Matrix]:
    """Full names ('layers.3.mlp.up_proj') of every prunable matrix, in layer order."""
    out: dict[str, Matrix] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, mat in prunable_matrices(layer).items():
            out[f"layers.{i}.{name}"] = mat
    return out


def stack_prefix(model: nn.Module) -> str:
    """The model's own name of its decoder stack ('model.layers', 'transformer.h', 'model.decoder.layers')."""
    stack = decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is stack)


def param_names(model: nn.Module) -> dict[str, str]:
    """Our matrix names ('layers.3.mlp.up_proj') -> the model's own parameter names
    ('model.layers.3.mlp.up_proj.weight', 'model.layers.3.mlp.experts.down_proj'), as ``state_dict`` and
    ``from_pretrained`` know them."""
    prefix = stack_prefix(model)
    return {name: f"{prefix}.{name.split('.', 2)[1]}.{mat.param}" for name, mat in all_prunable(model).items()}


def weight_inventory(model: nn.Module) -> dict:
    """What is pruned and what is not: every parameter of two or more dimensions, the pruned ones by kind
    (linear, conv1d, experts), the others by reason (embedding, lm head, embedding (tied lm head), router,
    shared-expert gate, other), each with its parameter count and its names (layer indices shown as ``*``)."""
    stack, prefix = decoder_layers(model), stack_prefix(model)
    mats = all_prunable(model)
    pruned_kind = {f"{prefix}.{full.split('.', 2)[1]}.{m.param}": m.kind for full, m in mats.items()}
    skipped: dict[str, str] = {}
    experts = [block_experts(layer) for layer in stack]
    for i, layer in enumerate(stack):
        for pname, reason in block_matrices(layer, experts=experts[i])[1].items():
            skipped[f"{prefix}.{i}.{pname}"] = reason
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(head.weight)} if head is not None and hasattr(head, "weight") else set()
    pruned: dict[str, list] = {}
    not_pruned: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        pattern = _pattern(name, prefix)
        if name in pruned_kind:
            acc = pruned.setdefault(pruned_kind[name], [0, 0])
            acc[0] += 1
            acc[1] += p.numel()
            continue
        reason = ("embedding (tied lm head)" if id(p) in head_ids and id(p) in embeddings else "lm head"
                  if id(p) in head_ids else "embedding" if id(p) in embeddings else skipped.get(name, "other"))
        entry = not_pruned.setdefault(reason, {"tensors": 0, "parameters": 0, "names": []})
        entry["tensors"] += 1
        entry["parameters"] += p.numel()
        if pattern not in entry["names"]:
            entry["names"].append(pattern)
    return {"pruned": {"matrices": len(mats), "parameters": int(sum(m.numel() for m in mats.values())),
                       "by_kind": {k: {"tensors": v[0], "parameters": v[1]} for k, v in pruned.items()}},
            "not_pruned": not_pruned}


def _pattern(name: str, prefix: str) -> str:
    """'model.layers.3.mlp.gate.weight' -> 'model.layers.*.mlp.gate.weight'."""
    if name.startswith(prefix + "."):
        rest = name[len(prefix) + 1:].split(".", 1)
        return f"{prefix}.*.{rest[1]}" if len(rest) == 2 and rest[0].isdigit() else name
    return name
