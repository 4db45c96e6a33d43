"""experiments/fedspallm_table.py: a FedSpaLLM cell interrupted mid-prune resumes after its last finished layer
and caches the same numbers as an uninterrupted run; its checkpoint is owner-only and gone once cached."""

from __future__ import annotations

import json
import stat

import pytest

from secprune.experiments import fedspallm_table


class _Crash(Exception):
    pass


def _argv(folder, cache) -> list[str]:
    return ["--model", str(folder), "--clients", "2", "--sparsities", "0.5", "--methods", "fedspallm", "standalone",
            "--samples-per-client", "2", "--seqlen", "32", "--eval-windows", "2", "--eval-seqlen", "32",
            "--standalone-clients", "1", "--cache", str(cache), "--quiet"]


def _numbers(cache) -> dict:
    """The cached cells without their timings (prune_s, resumed differ between runs by design)."""
    cells = json.loads(cache.read_text())
    return {k: {f: v for f, v in cell.items() if f not in ("prune_s", "resumed")} for k, cell in cells.items()}


def test_interrupted_cell_resumes_from_its_layer_checkpoint(tiny_folder, tmp_path, monkeypatch):
    # prepare: an uninterrupted run for reference, then a run whose prune dies after its first layer
    full_cache, cache = tmp_path / "full.json", tmp_path / "cells.json"
    assert fedspallm_table.main(_argv(tiny_folder, full_cache)) == 0
    real = fedspallm_table.fedspallm_prune
    steps: list[int] = []
    seen_modes: list[int] = []

    def dying(*args, **kwargs):
        def on_layer(t, li):
            seen_modes.append(stat.S_IMODE(kwargs["checkpoint"].stat().st_mode))
            if li == 0:
                raise _Crash
        return real(*args, **kwargs, on_layer=on_layer)

    def counting(*args, **kwargs):
        return real(*args, **kwargs, on_layer=lambda t, li: steps.append(li))

    # execute: crash, then the same command again
    monkeypatch.setattr(fedspallm_table, "fedspallm_prune", dying)
    with pytest.raises(_Crash):
        fedspallm_table.main(_argv(tiny_folder, cache))
    ck = tmp_path / "cells.json.partial" / "c2-s0.5"
    assert (ck / "state.pt").exists() and not cache.exists()
    monkeypatch.setattr(fedspallm_table, "fedspallm_prune", counting)
    assert fedspallm_table.main(_argv(tiny_folder, cache)) == 0

    # assert: only layer 1 ran again, the cells equal the uninterrupted run's, the checkpoint was private and is gone
    assert steps == [1]
    assert seen_modes == [0o700]
    assert _numbers(cache) == _numbers(full_cache)
    cells = json.loads(cache.read_text())
    fed = next(v for k, v in cells.items() if "|fedspallm|" in k)
    assert fed["resumed"] is True
    assert not ck.exists()
