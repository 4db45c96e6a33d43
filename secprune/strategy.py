"""What a federated pruning algorithm is, apart from who runs it: a client step and a server step.

A run is a sequence of :class:`Task` s, one per (round, decoder layer). For each task:

1. the server says which clients take part and, when the algorithm sends weights down, which layer
   weights they prune (:meth:`Strategy.received`); clients that do not take part only move on;
2. every participating client runs its own windows through the layer (statistics from the layer it
   received, or its dense layer) and calls :meth:`Strategy.client_step`: its local pruning, and the
   integer vectors it submits to the (secure) sum, by matrix and *kind* (``"mask"``, ``"weight"``);
3. the server gets only the element-wise sums over the participants and calls :meth:`Strategy.server_step`;
4. each client continues to the next layer with the weights :meth:`Strategy.next_weights` gives it
   (its own pruned layer, the server's global layer, or its dense layer).

The same strategy object is run in-process by :func:`secprune.simulation.simulate` (all clients batched
over one model copy) and across processes by the Flower apps (:mod:`secprune.flower`); only the driver
differs. Client methods use nothing but the client's own statistics and what the server sent; server
methods nothing but the sums.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the contract is imported by light protocol stages; torch only where tensors flow
    import torch


@dataclass
class Task:
    """One step of a run: decoder layer ``layer`` in round ``round``."""

    step: int
    round: int
    layer: int
    clients: list[int]  # clients that prune this layer (the others only move on)
    restart: bool = False  # clients start again from the embeddings before this task (a new round)


@dataclass
class ClientUpdate:
    """A client's result for one layer: what it submits, and the model it keeps."""

    vectors: dict[str, dict[str, np.ndarray | torch.Tensor]]  # matrix -> kind -> flat vector for the sum
    masks: dict[str, torch.Tensor]  # its local masks (True = pruned)
    own: dict[str, torch.Tensor] | None = None  # its own pruned matrices when they are not just masked weights
    upload: dict[str, int] | None = None  # entries a plaintext upload would carry, per matrix (accounting)
    clipped: dict[str, int] | None = None  # fixed-point entries clipped to the public bound, per matrix


@dataclass
class Kind:
    """One kind of submitted vector: integer entries in [0, max_value], or float (plaintext sums only)."""

    name: str
    max_value: int
    is_float: bool = False


class Strategy(ABC):
    """Abstract base; see the module docstring for the protocol.  The abstract methods are the algorithm; the
    others are optional hooks with the defaults of an algorithm that needs none of them."""

    name = "base"

    @abstractmethod
    def tasks(self, *, n_layers: int) -> list[Task]:
        """The run's plan (fixed in advance, so a resumed run can skip what is done)."""
        raise NotImplementedError

    def waits_for_server(self, task: Task) -> bool:
        """Whether clients need the server's answer to ``task`` before the next task of the same round
        (iterative FedPrLLM). Tasks a client can run back to back travel in one message."""
        return False

    def broadcast(self, task: Task) -> dict[str, torch.Tensor]:
        """What the server sends every client after ``task`` so that :meth:`next_weights` works at a client
        that holds none of the server's state (names -> tensors)."""
        return {}

    def load_broadcast(self, task: Task, data: dict[str, torch.Tensor]) -> None:
        """Client side: take in :meth:`broadcast`."""
        return None

    def received(self, task: Task) -> dict[str, torch.Tensor] | None:
        """Layer weights the server sends the participants of ``task`` (None = they use their dense layer)."""
        return None

    def session_scope(self, task: Task) -> str:
        """Consecutive tasks with the same scope share one secure-aggregation session (one key agreement)."""
        return f"round{task.round}.layers.{task.layer}"

    @abstractmethod
    def kinds(self, task: Task) -> list[Kind]:
        """The kinds of vector every participant submits in ``task`` (one sum per matrix and kind)."""
        raise NotImplementedError

    def input_rule(self, task: Task, kind: Kind, shape: tuple[int, ...]) -> dict | None:
        """What every honest participant's vector of ``kind`` for a matrix of ``shape`` satisfies beyond its
        entry range, for backends that check each client's input (he): ``{"group", "shape", "ones"}`` = exactly
        ``ones`` ones in every comparison group (see :class:`~secprune.secagg.he_validation.Rule`); None when
        nothing more is known."""
        return None

    # --- client side
    @abstractmethod
    def client_step(self, task: Task, *, layer: dict[str, torch.Tensor], stats: dict[str, torch.Tensor | None]
                    ) -> ClientUpdate:
        """Prune one layer: ``layer`` are the weights the statistics were collected through."""
        raise NotImplementedError

    @abstractmethod
    def next_weights(self, task: Task, *, update: ClientUpdate | None, layer: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor] | None:
        """Weights a client's windows go through to reach the next layer (None = its dense layer).

        ``update`` is the client's own result (None if it did not take part), ``layer`` the weights it
        pruned. Clients that continue with the same weights get the same object, so a simulation can
        run them as one batch."""
        raise NotImplementedError

    # --- server side
    @abstractmethod
    def server_step(self, task: Task, sums: dict[str, dict[str, np.ndarray | torch.Tensor]], *,
                    layer: dict[str, torch.Tensor], uploads: dict[int, dict[str, int]] | None = None,
                    sent_bytes: dict[int, int] | None = None) -> dict:
        """Aggregate the participants' sums of one layer (each shaped like its matrix). ``layer`` are the
        weights the server sent (or the dense ones); ``uploads`` and ``sent_bytes`` are sizes, for the
        communication log. Returns the step's server state (the driver checkpoints it)."""
        raise NotImplementedError

    @abstractmethod
    def load_step(self, state: dict) -> None:
        """Put back what :meth:`server_step` returned (resuming a run)."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Small run-level server state (communication logs), saved with every step."""
        return {}

    def load_extra(self, state: dict) -> None:
        return None

    @abstractmethod
    def fingerprint(self) -> dict:
        """Everything that changes the result, for checkpoint fingerprints."""
        raise NotImplementedError
