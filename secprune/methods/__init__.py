"""Local (client-side) pruning methods."""

from __future__ import annotations

from secprune.methods.base import LocalResult, Method
from secprune.methods.magnitude import Magnitude
from secprune.methods.sparsegpt import SparseGPT
from secprune.methods.upstream import UpstreamWanda
from secprune.methods.wanda import Wanda, wanda_score

METHODS = ("wanda", "sparsegpt", "magnitude")


NUMERICS = ("default", "reference")


def make_method(name: str, *, sparsegpt_update: bool = False, numerics: str = "default",
                pad_to: int | None = None) -> Method:
    """The local method; ``numerics="reference"`` gives Wanda as upstream computes it (with ``pad_to`` its
    zero samples, see :mod:`secprune.methods.upstream`)."""
    if numerics not in NUMERICS:
        raise ValueError(f"--numerics: expected one of {', '.join(NUMERICS)}, got {numerics!r}")
    if numerics == "reference":
        if name != "wanda":
            raise ValueError(f"--numerics reference reproduces upstream Wanda; got --method {name}")
        return UpstreamWanda(pad_to=pad_to)
    if name == "wanda":
        return Wanda()
    if name == "sparsegpt":
        return SparseGPT(update=sparsegpt_update)
    if name == "magnitude":
        return Magnitude()
    raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {name!r}")


__all__ = ["METHODS", "NUMERICS", "LocalResult", "Method", "Magnitude", "SparseGPT", "UpstreamWanda", "Wanda",
           "make_method", "wanda_score"]
