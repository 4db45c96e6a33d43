"""Federated pruning algorithms as a client step and a server step (:mod:`secprune.strategies.base`)."""
