"""Local (client-side) pruning methods."""

from __future__ import annotations

from secprune.methods.base import LocalResult, Method
from secprune.methods.magnitude import Magnitude
from secprune.methods.sparsegpt import SparseGPT
from secprune.methods.wanda import Wanda, wanda_score

METHODS = ("wanda", "sparsegpt", "magnitude")


def make_method(name: str, *, sparsegpt_update: bool = False) -> Method:
    if name == "wanda":
        return Wanda()
    if name == "sparsegpt":
        return SparseGPT(update=sparsegpt_update)
    if name == "magnitude":
        return Magnitude()
    raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {name!r}")


__all__ = ["METHODS", "LocalResult", "Method", "Magnitude", "SparseGPT", "Wanda", "make_method", "wanda_score"]
