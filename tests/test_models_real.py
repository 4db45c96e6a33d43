"""The built-in models besides SmolLM2 (installed by scripts/setup.sh --models ...): their joined GGUF files are
the ones ../shared/DATA.md describes, they load as the architectures it names, and they are real language
models (PTB perplexity far below a random model's, which sits near the vocabulary size). Each test skips
with the set-up command when its model is not installed. The first run converts the GGUF (1-6 minutes)."""

from __future__ import annotations

import pytest
import torch

from secprune import calibration, gguf_assets
from secprune.evaluate import perplexity
from secprune.models_registry import MODELS, setup_command

pytestmark = pytest.mark.realmodel

# independent expectations, from ../shared/DATA.md: size and sha256 prefix of the joined GGUF, class, blocks,
# hidden size
EXPECTED = {
    "gemma3-270m": (253_113_024, "a5fd3b62", "Gemma3ForCausalLM", 18, 640),
    "qwen2.5-0.5b": (491_400_064, "1d961463", "Qwen2ForCausalLM", 24, 896),
    "qwen2.5-1.5b": (1_117_320_768, "cc324af0", "Qwen2ForCausalLM", 28, 1536),
}
SLOW = {"qwen2.5-1.5b"}  # 7 GB in fp32; a forward pass over a 256-token window takes seconds


def params(names):
    return [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in names]


def need(name: str) -> None:
    if not gguf_assets.installed(name):
        pytest.skip(f"{name} is not installed ({setup_command(name)})")


@pytest.mark.parametrize("name", params(EXPECTED))
def test_joined_gguf_is_the_documented_file(name, tmp_path):
    need(name)
    size, prefix, *_ = EXPECTED[name]
    path, temporary = gguf_assets.gguf_file(name, tmp_path)  # joins and checks every part and the whole
    assert temporary and path.stat().st_size == size
    assert gguf_assets.sha256_file(path).startswith(prefix) and MODELS[name].sha256.startswith(prefix)


@pytest.mark.parametrize("name", params(EXPECTED))
def test_model_loads_and_is_a_real_language_model(name):
    from secprune.model import decoder_layers, load_model

    need(name)
    _, _, cls, blocks, hidden = EXPECTED[name]
    model, tok = load_model(name)
    assert type(model).__name__ == cls and len(decoder_layers(model)) == blocks
    assert model.config.hidden_size == hidden
    windows = calibration.eval_set("ptb", tok, seqlen=256, max_windows=3)
    ppl = perplexity(model, windows, progress=False)
    assert 5 < ppl < 300, ppl  # a random model of this vocabulary scores ~1e5 (DATA.md: 56,000 for SmolLM2)
    del model


@pytest.mark.slow
def test_streaming_conversion_equals_transformers_gguf_loader(tmp_path):
    """Our tensor-by-tensor conversion gives the weights ``from_pretrained(gguf_file=...)`` gives, bit for bit."""
    from transformers import AutoModelForCausalLM

    from secprune.gguf_convert import convert_gguf

    path, _ = gguf_assets.gguf_file("smollm2-135m", tmp_path)
    out = convert_gguf(path, tmp_path / "converted", shard_bytes=64 << 20)  # several shards and an index
    assert (out / "model.safetensors.index.json").exists()
    ours = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
