"""`secprune prune`: calibration -> local masks -> (secure) aggregation -> global mask -> evaluation.

Every input is checked before any work (model, tokenizer, context length, test sets, client files). Outputs
go to a temporary folder renamed to ``--out`` only when the run succeeds; per-layer checkpoints live in the
owner-only ``<out>.partial/`` so an interrupted run resumes where it stopped. What lands in ``--out`` is
the server's output (global mask, counts with ``--scaling``) and numbers; a client's masks or calibration
token ids only when asked, owner-only, in ``<out>/private/``. See docs/outputs.md.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from secprune import calibration, log, outdir, summary
from secprune.algorithms import algorithm
from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.evaluate import build_evals
from secprune.model import inspect_model, load_lm, load_tokenizer, max_context
from secprune.run_common import Prepared


def prepare(cfg: PruneConfig) -> Prepared:
    """Check the inputs that can be checked cheaply (model folder, context, test sets, client data), then load."""
    path, config = inspect_model(cfg.model)
    ctx = max_context(config)
    ppl = any(e != "zero-shot" for e in cfg.eval)
    for flag, n in (("--seqlen", cfg.seqlen), ("--eval-seqlen", cfg.eval_seqlen if ppl else 0)):
        if ctx is not None and n > ctx:
            raise UsageError(f"{flag} {n}: longer than the model's context ({ctx} tokens)")
    tok = load_tokenizer(path)
    evals = build_evals(cfg, tok, config)
    calib = calibration.build(cfg, tok)
    return Prepared(load_lm(path, config, device=cfg.device), tok, calib, evals)


def run_prune(cfg: PruneConfig, *, progress: bool = True) -> dict:
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA device is available")
    out = Path(cfg.out)
    outdir.check_target(out, overwrite=cfg.overwrite)
    partial = out.with_name(out.name + ".partial")
    tmp = outdir.staging(out, kind="prune")
    try:
        t0 = time.perf_counter()
        prep = prepare(cfg)
        outdir.private_dir(partial)
        summ, details = algorithm(cfg.algorithm).run(cfg, prep, tmp, partial, progress=progress)
        summ["time_s"]["total_s"] = time.perf_counter() - t0
        summ["peak_memory"] = summary.peak_memory_mb(cfg.device)
        keep_private(cfg, prep, tmp, summ["files"])
        summary.write(tmp, summ, details)
        outdir.commit(tmp, out)
        shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summ


def keep_private(cfg: PruneConfig, prep: Prepared, folder: Path, files: dict) -> None:
    """``--keep-calibration``: the clients' token ids, owner-only, with a warning (never by default)."""
    if not cfg.keep_calibration:
        return
    path = outdir.private_dir(folder / "private") / "calibration.pt"
    with outdir.open_private(path) as f:
        torch.save({"windows": prep.calib.windows, "parts": prep.calib.parts, "sources": prep.calib.sources}, f)
    files["calibration"] = "private/calibration.pt"
    log.warn(f"--keep-calibration: every client's calibration token ids are kept in {cfg.out}/private/ "
             "(owner-only); they decode to the clients' text: delete them when the audit is done")
