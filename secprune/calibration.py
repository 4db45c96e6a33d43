"""Calibration windows and their split across clients (data -> calibration in the pipeline)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from secprune import data, partition
from secprune.config import PruneConfig
from secprune.errors import UsageError


@dataclass
class Calibration:
    windows: torch.Tensor  # (n, seqlen) token ids
    parts: list[np.ndarray]  # window indices held by each client
    sources: list[str]  # source name of each window
    info: dict  # what the summary records (no text)
    central: torch.Tensor | None = None  # the centralized baseline's windows when not ``windows`` (reference draw)

    @property
    def pooled(self) -> torch.Tensor:
        """Every window of the run, as one party holding them all would use them (the centralized baseline)."""
        return self.windows if self.central is None else self.central


def _source_ids(name: str, tokenizer, *, special_tokens: bool = False) -> torch.Tensor:
    key = name.replace(":", "_").replace("/", "_") if data.is_public(name) else None  # never cache user text
    return data.tokenize(tokenizer, data.corpus_text(name, "train"), cache_key=key, special_tokens=special_tokens)


def reference_draw(cfg: PruneConfig, tokenizer) -> Calibration:
    """Windows and client split exactly as upstream draws them (``--numerics reference``).

    FedPrLLM ``lib/data.py`` (``get_ptb``; ``get_wikitext2`` alike, after SparseGPT's ``datautils.py``): the
    training text tokenized with the tokenizer's special tokens, ``random.seed(seed)``, then ``nsamples``
    windows ``ids[i : i + seqlen]`` with ``i = random.randint(0, numel - seqlen - 1)``. FedPrLLM ``main.py``:
    ``random.shuffle`` of that list, continuing the same random stream, and client ``c`` takes samples
    ``[c d, (c + 1) d)`` with ``d = nsamples // clients`` (the remainder is unused). The centralized
    baseline takes every window in draw order.
    """
    name = cfg.calib.strip()
    ids = _source_ids(name, tokenizer, special_tokens=True)
    if ids.numel() <= cfg.seqlen + 1:
        raise UsageError(f"--seqlen {cfg.seqlen}: --calib {name} has only {ids.numel()} tokens")
    rng = random.Random(cfg.seed)
    drawn = torch.stack([ids[i:i + cfg.seqlen] for i in
                         (rng.randint(0, ids.numel() - cfg.seqlen - 1) for _ in range(cfg.nsamples))])
    order = list(range(cfg.nsamples))
    rng.shuffle(order)
    per = cfg.nsamples // cfg.clients
    windows = drawn[torch.as_tensor(order[:per * cfg.clients])]
    parts = [np.arange(c * per, (c + 1) * per) for c in range(cfg.clients)]
    info = {"partition": "reference", "sources": [name], "clients": cfg.clients,
            "windows_per_client": [per] * cfg.clients, "unused_windows": cfg.nsamples - per * cfg.clients,
            "draw": "upstream loaders: random.seed(seed), randint offsets, random.shuffle split"}
    return Calibration(windows, parts, [name] * len(windows), info, central=drawn)


def build(cfg: PruneConfig, tokenizer) -> Calibration:
    if cfg.numerics == "reference":
        return reference_draw(cfg, tokenizer)
    rng = np.random.default_rng(cfg.seed)
    if cfg.client_data:  # each client's own private text (read, tokenized, never cached or copied)
        counts = windows_per_client(cfg.nsamples, len(cfg.client_data))
        wins, parts, sources, start = [], [], [], 0
        for i, (path, n) in enumerate(zip(cfg.client_data, counts, strict=True)):
            wins.append(client_windows(tokenizer, path, client=i, n=n, seqlen=cfg.seqlen, seed=cfg.seed))
            parts.append(np.arange(start, start + n))
            sources += [f"client{i}"] * n
            start += n
        info = {"partition": "client-data", "clients": len(parts), "windows_per_client": counts}
        return Calibration(torch.cat(wins), parts, sources, info)

    names = [s.strip() for s in cfg.calib.split(",") if s.strip()]
    if cfg.partition == "dirichlet" and len(names) < 2:
        if names == ["brown"]:
            names = [f"brown:{g}" for g in data.BROWN_GENRES.values()]
        else:
            raise UsageError("--partition dirichlet needs several sources in --calib (e.g. "
                             "'ptb,wiki-lead,brown' or 'brown' for its 15 genres)")
    counts = [len(a) for a in np.array_split(np.arange(cfg.nsamples), len(names))]
    wins, sources = [], []
    for name, n in zip(names, counts, strict=True):
        if n:
            wins.append(data.sample_windows(_source_ids(name, tokenizer), n=n, seqlen=cfg.seqlen, rng=rng,
                                            source=f"--calib {name}", bos=data.window_bos(tokenizer)))
            sources += [name] * n
    windows = torch.cat(wins)
    if cfg.partition == "iid":
        parts = partition.iid(len(windows), cfg.clients, rng=rng)
    else:
        parts = partition.dirichlet(np.array(sources), cfg.clients, alpha=cfg.alpha, rng=rng)
    per_client = [{s: int(sum(1 for j in p if sources[j] == s)) for s in names} for p in parts]
    info = {"partition": cfg.partition, "sources": names, "clients": len(parts),
            "windows_per_client": [len(p) for p in parts], "source_mix_per_client": per_client}
    return Calibration(windows, parts, sources, info)


def client_windows(tokenizer, path: str | Path, *, client: int, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """Client ``client``'s ``n`` windows from its own text, drawn from its own seeded stream: they depend on
    nothing but that text, so a client in its own process (Flower) draws exactly what a simulation draws."""
    ids = data.tokenize(tokenizer, data.read_text_path(Path(path)))
    return data.sample_windows(ids, n=n, seqlen=seqlen, rng=np.random.default_rng([seed, 7, client]),
                               source=f"--client-data {path}", bos=data.window_bos(tokenizer))


def windows_per_client(nsamples: int, n_clients: int) -> list[int]:
    return [len(a) for a in np.array_split(np.arange(nsamples), n_clients)]


@lru_cache(maxsize=8)  # one run evaluates many masks on the same windows: read and tokenize once
def eval_set(name: str, tokenizer, *, seqlen: int, max_windows: int | None) -> torch.Tensor:
    ids = data.tokenize(tokenizer, data.corpus_text(name, "test"), cache_key=f"{name}-test")
    if ids.numel() < seqlen:
        raise UsageError(f"--eval-seqlen {seqlen}: the {name} test set has only {ids.numel()} tokens; "
                         f"expected at most that many per window")
    return data.eval_windows(ids, seqlen=seqlen, max_windows=max_windows or None, bos=data.window_bos(tokenizer))
