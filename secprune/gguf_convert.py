"""Dequantize a GGUF checkpoint to a float32 safetensors folder, one tensor at a time.

``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` dequantizes every tensor into one state
dict before it builds the model, so converting the 1.5B Qwen that way needs about twice its 6 GB of fp32
weights at once. This converter does the same work in the same way, tensor by tensor, with transformers'
own pieces (``transformers.modeling_gguf_pytorch_utils``: ``load_gguf_checkpoint`` for the metadata, the
architecture's ``TensorProcessor`` for reverse permutations and Gemma's norm offset,
``get_gguf_hf_weights_map`` for the names, ``gguf.dequantize`` for the blocks) and writes shards of at most
``shard_bytes``: peak memory is one shard plus one tensor. Config and tokenizer come from transformers' GGUF
readers (``AutoConfig`` / ``AutoTokenizer`` with ``gguf_file``). The weights equal a ``from_pretrained``
load bit for bit (checked on SmolLM2 in tests/test_models_real.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

SHARD_BYTES = 512 << 20


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def convert_gguf(gguf: Path, out: Path, *, shard_bytes: int = SHARD_BYTES, extra: dict | None = None) -> Path:
    """Write ``out`` (config.json, tokenizer, model*.safetensors, secprune_source.json) from ``gguf``; atomic."""
    from gguf import GGUFReader, dequantize
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )

    gguf = Path(gguf)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)
        parsed = {"config": parsed["config"], "tensors": {}}  # drop the parsed vocabulary: not needed here
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        config.architectures = [type(skeleton).__name__]
        config.dtype = torch.float32
        reader = GGUFReader(str(gguf))
        arch = read_field(reader, "general.architecture")[0]
        processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=parsed["config"])
        names = get_gguf_hf_weights_map(skeleton, processor)

        shards: list[tuple[list[str], int]] = []  # (tensor names, bytes) per shard
        current: dict[str, torch.Tensor] = {}
        size = 0

        def flush() -> None:
            nonlocal current, size
            if current:
                _save_shard(current, tmp / f"shard-{len(shards):05d}.safetensors")
                shards.append((list(current), size))
                current, size = {}, 0

        for t in reader.tensors:
            res = processor.process(weights=dequantize(t.data, t.tensor_type), name=t.name,
                                    tensor_key_mapping=names, parsed_parameters=parsed)
            if res.name not in names:
                continue
            w = res.weights  # a fresh array for quantized tensors; a read-only view of the file for F32/F16 ones
            tensor = torch.from_numpy(w if w.flags.writeable and w.flags.owndata else np.copy(w)).to(torch.float32)
            if current and size + tensor.nbytes > shard_bytes:
                flush()
            current[names[res.name]] = tensor
            size += tensor.nbytes
        for key, tensor in parsed["tensors"].items():  # tensors a processor assembles itself (MoE experts)
            current[key] = tensor.to(torch.float32)
            size += tensor.nbytes
        flush()

        expected = set(skeleton.state_dict())
        got = {k for keys, _ in shards for k in keys}
        tied = set(getattr(skeleton, "_tied_weights_keys", None) or [])
        missing = sorted(expected - got - (tied if config.get_text_config().tie_word_embeddings else set()))
        if missing:
            raise RuntimeError(f"{gguf.name}: {len(missing)} weights of {type(skeleton).__name__} are not in the "
                               f"GGUF (e.g. {missing[0]})")
        _name_shards(tmp, shards)
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        (tmp / "secprune_source.json").write_text(json.dumps({"gguf": gguf.name, **(extra or {})}, indent=2))
        if not (out / "config.json").exists():  # another process may have finished the same conversion
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _name_shards(folder: Path, shards: list[tuple[list[str], int]]) -> None:
    """Hugging Face names: model.safetensors, or model-0000i-of-0000n.safetensors plus the index."""
    if len(shards) == 1:
        (folder / "shard-00000.safetensors").rename(folder / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, (keys, nbytes) in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / f"shard-{i:05d}.safetensors").rename(folder / name)
        weight_map.update(dict.fromkeys(keys, name))
        total += nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
