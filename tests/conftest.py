"""Shared fixtures: a tiny random LLaMA built from a config, and random token windows."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 256


def tiny_llama(*, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, use_cache=False)
    return LlamaForCausalLM(cfg).eval()


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", metavar="DEV",
                     help="torch device for the tests that take the `device` fixture: cpu (default), cuda or cuda:N")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device under test (``pytest --device cuda``); the pipeline runs wherever the model lives."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"--device {dev}: no CUDA device is available", pytrace=False)
    return dev


@pytest.fixture
def model(device) -> LlamaForCausalLM:
    return tiny_llama().to(device)


@pytest.fixture
def windows() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (8, 32), generator=g)


def char_tokenizer():
    """A character-level tokenizer (printable ASCII): every text tokenizes, no download."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["[UNK]"] + list(string.printable)
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def make_model_folder(path, *, layers: int = 2, max_positions: int = 128, weights: bool = True,
                      tokenizer: bool = True):
    """A tiny random LLaMA saved as a Hugging Face folder (optionally without weights or tokenizer)."""
    model = tiny_llama(layers=layers)
    model.config.max_position_embeddings = max_positions
    model.save_pretrained(path)
    if not weights:
        (path / "model.safetensors").unlink()
    if tokenizer:
        char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("tiny-llama"))


# distinctive private texts: none of their 12-character runs occurs in the public corpora
CLIENT_TEXTS = ("quokka zorvatide 4417-QX vexillum jubjub xylograph frumious snicker-snack. " * 40,
                "bandersnatch 99-ZK tumtum callooh wabe borogove mimsy outgrabe 731 jabberwock. " * 40)


@pytest.fixture(scope="session")
def client_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    paths = []
    for i, t in enumerate(CLIENT_TEXTS):
        (root / f"c{i}.txt").write_text(t)
        paths.append(str(root / f"c{i}.txt"))
    return paths


@pytest.fixture(scope="session")
def federation(tiny_folder, tmp_path_factory):
    """Four clients with their own text files, a keys folder (with a key holder) and the tiny model (four: a secure
    sum covers at least three clients, and one may drop)."""
    from secprune.cli import main

    root = tmp_path_factory.mktemp("federation")
    texts = [*CLIENT_TEXTS, "vorpal snicker tulgey frabjous galumphing 4242 manxome uffish. " * 40,
             "slithy toves gyre gimble 58-RT brillig raths mome tumtum whiffling burbled. " * 40]
    files = []
    for i, t in enumerate(texts):
        (root / f"c{i}.txt").write_text(t)
        files.append(str(root / f"c{i}.txt"))
    assert main(["keys", "--clients", "4", "--key-holder", "--out", str(root / "keys"), "--quiet"]) == 0
    return {"root": root, "files": files, "model": tiny_folder}
