"""Step checkpoints for layer-by-layer pruning runs, so an interrupted run resumes where it stopped.

A run is a sequence of steps (FedPrLLM: one per decoder layer; FedSpaLLM: one per (round, layer)).
``step{s}.pt`` holds what step ``s`` produced (written once); ``state.pt`` holds the inputs of the next
step's layer and small run-level state (communication logs, ...), so each save costs one step, not
everything so far. A fingerprint of data and configuration guards against resuming a different run.

Layer inputs are activations of the clients' calibration text (layer 0's are its token embeddings), so
the folder is the owner's alone (0700, files 0600) and the caller deletes it when the run succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secprune.outdir import private_dir


def fingerprint(windows: torch.Tensor, parts: list[np.ndarray], **config) -> str:
    """SHA-256 over the calibration token ids, the client split and the JSON of ``config``."""
    h = hashlib.sha256(windows.numpy().tobytes())
    h.update(json.dumps([np.asarray(p).tolist() for p in parts]).encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_id(model) -> dict:
    """What identifies the model for a checkpoint: its name or path and its parameter count."""
    return {"name": getattr(model.config, "_name_or_path", ""), "params": sum(p.numel() for p in model.parameters())}


@dataclass
class Resumed:
    step: int  # first step still to run
    inps: torch.Tensor  # inputs of that step's layer
    steps: list[dict]  # what steps 0..step-1 saved
    extra: dict  # run-level state saved with the last step


class StepCheckpoint:
    def __init__(self, folder: Path | None, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    def _write(self, name: str, obj: dict) -> None:
        assert self.folder is not None
        tmp = self.folder / f"{name}.tmp"
        torch.save(obj, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.folder / name)  # atomic: a crash mid-write leaves the previous file

    def load(self) -> Resumed | None:
        """The saved progress, or None when there is none (or it belongs to another run)."""
        if self.folder is None or not (self.folder / "state.pt").exists():
            return None
        state = torch.load(self.folder / "state.pt", weights_only=False, map_location="cpu")
        if state.get("fingerprint") != self.fingerprint:
            return None
        steps = [torch.load(self.folder / f"step{s}.pt", weights_only=False, map_location="cpu")
                 for s in range(state["step"])]  # callers move what they keep to their device
        return Resumed(state["step"], state["inps"], steps, state.get("extra", {}))

    def save(self, step: int, inps: torch.Tensor, step_state: dict,
             extra: Callable[[], dict] | None = None) -> None:
        """Record step ``step`` as done; ``inps`` are the next step's layer inputs.

        ``extra`` builds the run-level state; it is called only when checkpointing is on.
        """
        if self.folder is None:
            return
        private_dir(self.folder)
        self._write(f"step{step}.pt", step_state)
        self._write("state.pt", {"step": step + 1, "inps": inps.cpu(), "extra": extra() if extra else {},
                                 "fingerprint": self.fingerprint})
