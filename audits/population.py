"""Public windows for shadow sets and non-member trials, disjoint from every run window and from each other.

A non-member that shares text with a member is not a non-member: windows drawn at random offsets of
the same token stream overlap the run's calibration windows (one shared 296 of 512 tokens with a
target in an earlier audit). Here the stream is cut into non-overlapping ``seqlen`` chunks, and a chunk
is usable only if none of its ``n``-grams (default 16 tokens) occurs in any run window or in a chunk
already taken: that excludes every chunk overlapping a run window by even one token (the run window's
n-grams cover all its positions) and repeated passages elsewhere in the corpus.

The attacker's frequency prior (public token counts) is computed on the same stream with every
position covered by a run window's n-gram removed, so it holds no count from the private windows.
"""

from __future__ import annotations

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): a polynomial hash base


def ngram_hashes(*, ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash (mod 2^64) of every length-``n`` run of ``ids``: ``len(ids) - n + 1`` values."""
    a = np.asarray(ids, dtype=np.uint64) + np.uint64(1)
    if len(a) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(len(a) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MULT + a[j:len(a) - n + 1 + j]
    return h


def covered_positions(*, stream: np.ndarray, windows: np.ndarray, n: int) -> np.ndarray:
    """Bool per stream position: inside some ``n``-gram that also occurs in one of ``windows``."""
    stream = np.asarray(stream)
    if len(windows) == 0:
        return np.zeros(len(stream), dtype=bool)
    private = np.unique(np.concatenate([ngram_hashes(ids=w, n=n) for w in np.asarray(windows)]))
    hit = np.isin(ngram_hashes(ids=stream, n=n), private)
    cover = np.zeros(len(stream) + 1, dtype=np.int64)  # difference array: +1 at start, -1 after the n-gram
    starts = np.flatnonzero(hit)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    return np.cumsum(cover)[: len(stream)] > 0


def disjoint_windows(*, stream: np.ndarray, seqlen: int, count: int, exclude: np.ndarray,
                     rng: np.random.Generator, n: int = 16) -> tuple[np.ndarray, dict]:
    """``count`` chunks of ``seqlen`` tokens sharing no ``n``-gram with ``exclude`` or with each other.

    Returns (windows (count, seqlen) int64, info with the chunk starts and what was excluded). Raises
    ValueError when the stream has too few usable chunks.
    """
    stream = np.asarray(stream, dtype=np.int64)
    covered = covered_positions(stream=stream, windows=exclude, n=n)
    n_chunks = len(stream) // seqlen
    blocked = covered[: n_chunks * seqlen].reshape(n_chunks, seqlen).any(1)
    order = rng.permutation(np.flatnonzero(~blocked))
    taken: set[int] = set()
    starts, dup = [], 0
    for c in order:
        if len(starts) == count:
            break
        chunk = stream[c * seqlen:(c + 1) * seqlen]
        hs = set(ngram_hashes(ids=chunk, n=n).tolist())
        if hs & taken:  # repeats text of a chunk already taken
            dup += 1
            continue
        taken |= hs
        starts.append(int(c) * seqlen)
    if len(starts) < count:
        raise ValueError(f"only {len(starts)} disjoint {seqlen}-token chunks available, {count} requested")
    wins = np.stack([stream[s:s + seqlen] for s in starts]) if starts else np.zeros((0, seqlen), np.int64)
    return wins, {"starts": starts, "chunks": n_chunks, "chunks_overlapping_run_windows": int(blocked.sum()),
                  "chunks_repeating_taken_text": dup, "ngram": n}


def public_frequencies(*, stream: np.ndarray, exclude: np.ndarray, vocab: int, n: int = 16) -> tuple[np.ndarray, int]:
    """Token counts of ``stream`` without the positions covered by ``exclude``'s n-grams; and how many
    positions were removed."""
    stream = np.asarray(stream, dtype=np.int64)
    covered = covered_positions(stream=stream, windows=exclude, n=n)
    freq = np.bincount(stream[~covered], minlength=vocab)[:vocab].astype(np.float64)
    return freq, int(covered.sum())


def max_shared_run(*, a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common contiguous token run of two windows (a check for tests and reports)."""
    a, b = np.asarray(a), np.asarray(b)
    best = 0
    prev = np.zeros(len(b) + 1, dtype=np.int64)
    for x in a:
        cur = np.zeros(len(b) + 1, dtype=np.int64)
        eq = b == x
        cur[1:][eq] = prev[:-1][eq] + 1
        best = max(best, int(cur.max()))
        prev = cur
    return best
