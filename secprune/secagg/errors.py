"""Errors raised by the secure-summation protocols."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message was malformed, tampered with, replayed, addressed to another party or from another round."""


class SecAggAbortError(RuntimeError):
    """A round aborted because fewer than ``threshold`` parties survived a stage (Bonawitz et al. 2017)."""
