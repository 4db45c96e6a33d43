"""FedPrLLM (Guo et al., 2025, Sec. 3 and Fig. 1) as a client step and a server step.

Client (steps 1, 7): prune each matrix of the layer with the local method (Wanda, SparseGPT, magnitude)
from the client's own statistics; submit the 0/1 mask (1 = pruned). Server (steps 2-6): the sum of the
masks is the vote count M_hat; the final mask prunes the k most-voted weights of every comparison group;
with ``scaling`` kept weights are multiplied by (m - M_hat) / m.

* one-shot: every client prunes its whole model alone, continuing layer after layer from its own pruned
  layer; the server's answers never reach the clients until the end, so the masks can be summed layer by
  layer as they come (the server learns exactly the per-matrix sums either way): one communication round.
* iterative: after each layer the global mask is broadcast and every client continues from the global
  pruned layer: one round per layer.
"""

from __future__ import annotations

import numpy as np
import torch

from secprune.fedprllm.aggregate import count_tensor, final_mask, pruned_weight, scale_factor
from secprune.masks import PackedMasks
from secprune.methods import Method
from secprune.strategy import ClientUpdate, Kind, Strategy, Task
from secprune.topk import tie_break

STRATEGIES = ("one-shot", "iterative")


class FedPrLLM(Strategy):
    name = "fedprllm"

    def __init__(self, *, method: Method, n_clients: int, sparsity: float, local_group: str = "row",
                 server_group: str = "layer", strategy: str = "one-shot", scaling: bool = False, seed: int = 0,
                 stable_ties: bool = False, keep_counts: bool = True, check_counts: bool = True) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"--strategy: expected one of {STRATEGIES}, got {strategy!r}")
        self.method, self.n_clients, self.sparsity = method, n_clients, sparsity
        self.local_group, self.server_group, self.strategy = local_group, server_group, strategy
        self.scaling, self.seed = scaling, seed
        self.stable_ties = stable_ties  # --numerics reference: ties to the lower index, as upstream's stable sort
        self.check_counts = check_counts  # exact sums: every group must hold voters x k votes (not with DP noise)
        # vote counts M_hat per matrix, as the server learnt them; kept after each step only when scaling
        # needs them or ``keep_counts`` (a byte per weight: 1.3 GB on a 1.5B model)
        self.counts: dict[str, torch.Tensor] = {}
        self.keep_counts = keep_counts or scaling
        self.final: PackedMasks = PackedMasks()  # the server's final mask per matrix (True = pruned), bit-packed
        self.voters: dict[str, int] = {}  # clients whose masks the count holds (m, less any dropout)
        self._prio: dict[str, torch.Tensor] = {}
        self._shared: tuple[int, dict[str, torch.Tensor] | None] | None = None

    def tasks(self, *, n_layers: int) -> list[Task]:
        every = list(range(self.n_clients))
        return [Task(step=li, round=0, layer=li, clients=every, restart=li == 0) for li in range(n_layers)]

    def session_scope(self, task: Task) -> str:
        return "model"  # every client takes part in every layer: one key agreement for the whole model

    def kinds(self, task: Task) -> list[Kind]:
        return [Kind("mask", 1)]

    def input_rule(self, task: Task, kind: Kind, shape: tuple[int, ...]) -> dict | None:
        """Every local mask prunes exactly the method's k entries of each local comparison group (Algorithm 1,
        line 4: int(sparsity x group size), or SparseGPT's per-block counts with the update)."""
        return {"group": self.local_group, "shape": list(shape), "ones": self._k(tuple(shape))}

    def _k(self, shape: tuple[int, ...]) -> int:
        return self.method.pruned_per_group(shape=shape, group=self.local_group, sparsity=self.sparsity)

    def waits_for_server(self, task: Task) -> bool:
        return self.strategy == "iterative"  # step 7: the global layer goes back before the next layer

    def broadcast(self, task: Task) -> dict[str, torch.Tensor]:
        if self.strategy != "iterative":
            return {}
        prefix = f"layers.{task.layer}."
        out = {f"final/{k}": v for k, v in self.final.items() if k.startswith(prefix)}
        if self.scaling:
            out |= {f"counts/{k}": v for k, v in self.counts.items() if k.startswith(prefix)}
            out |= {f"voters/{k}": torch.tensor(v) for k, v in self.voters.items() if k.startswith(prefix)}
        return out

    def load_broadcast(self, task: Task, data: dict[str, torch.Tensor]) -> None:
        for key, value in data.items():
            kind, full = key.split("/", 1)
            {"final": self.final, "counts": self.counts}.get(kind, {})[full] = value
            if kind == "voters":
                self.voters[full] = int(value)

    # --- client side
    def _priority(self, layer: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = f"local:{layer}.{name}"  # the seeded tie-break of the local top-k (the same at every client)
        if key not in self._prio:
            self._prio = {k: v for k, v in self._prio.items() if k.startswith(f"local:{layer}.")}
            self._prio[key] = tie_break(shape=shape, group=self.local_group, seed=self.seed, tag=key,
                                        stable=self.stable_ties)
        return self._prio[key]

    def client_step(self, task: Task, *, layer: dict[str, torch.Tensor], stats: dict[str, torch.Tensor | None]
                    ) -> ClientUpdate:
        masks, own, vectors = {}, {}, {}
        for n, w in layer.items():
            res = self.method.prune(w, stats.get(n), sparsity=self.sparsity, group=self.local_group,
                                    prio=self._priority(task.layer, n, tuple(w.shape)))
            masks[n] = res.mask
            vectors[n] = {"mask": res.mask.reshape(-1).view(torch.uint8).cpu().numpy()}
            if res.weight is not None:  # SparseGPT's OBS update: the client continues from updated weights
                own[n] = res.weight.to(w.dtype)
        return ClientUpdate(vectors=vectors, masks=masks, own=own or None)

    def next_weights(self, task: Task, *, update: ClientUpdate | None, layer: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor] | None:
        if self.strategy == "iterative":  # step 7: everyone continues from the global layer
            return self._shared_for(task, lambda: {
                n: pruned_weight(w, self.final[f"layers.{task.layer}.{n}"], self.scale(f"layers.{task.layer}.{n}"))
                for n, w in layer.items()})
        if not self.method.needs_data:  # data-free: every client's mask is the same, one batch suffices
            return self._shared_for(task, lambda: _masked(layer, update))
        return update.own if update is not None and update.own is not None else _masked(layer, update)

    def scale(self, full: str) -> torch.Tensor | None:
        """Step 6: (m - M_hat) / m of one matrix, with m the clients whose masks were counted."""
        return scale_factor(self.counts[full], self.voters.get(full, self.n_clients)) if self.scaling else None

    def _shared_for(self, task: Task, make) -> dict[str, torch.Tensor]:
        if self._shared is None or self._shared[0] != task.step:
            self._shared = (task.step, make())
        return self._shared[1]

    # --- server side
    def server_step(self, task: Task, sums: dict[str, dict[str, np.ndarray | torch.Tensor]], *,
                    layer: dict[str, torch.Tensor], uploads: dict[int, dict[str, int]] | None = None,
                    sent_bytes: dict[int, int] | None = None) -> dict:
        state: dict = {"counts": {}, "final": {}, "voters": {}}
        for n, s in sums.items():
            full = f"layers.{task.layer}.{n}"
            counts = count_tensor(s["mask"], len(task.clients))
            if self.check_counts:
                check_group_totals(counts, voters=len(task.clients), k=self._k(tuple(counts.shape)),
                                   group=self.local_group, name=full)
            state["counts"][full] = counts
            state["voters"][full] = len(task.clients)
            state["final"][full] = final_mask(counts, sparsity=self.sparsity, group=self.server_group,
                                              seed=self.seed, name=full, stable=self.stable_ties)
        self.load_step(state)
        return state

    def load_step(self, state: dict) -> None:
        if self.keep_counts:
            self.counts.update(state["counts"])
        self.final.update(state["final"])
        self.voters.update(state.get("voters", {}))

    def fingerprint(self) -> dict:
        fp = {"algorithm": "fedprllm", "method": [self.method.name, getattr(self.method, "update", None)],
              "sparsity": self.sparsity, "local_group": self.local_group, "seed": self.seed,
              "strategy": self.strategy, "server_group": self.server_group, "scaling": self.scaling,
              "stable_ties": self.stable_ties, "method_class": type(self.method).__name__,
              "pad_to": getattr(self.method, "pad_to", None)}
        return fp | self.method.fingerprint()


def check_group_totals(counts: torch.Tensor, *, voters: int, k: int, group: str, name: str) -> None:
    """Every client's mask prunes exactly ``k`` entries of each comparison group (the method's count), so
    every group of the summed votes holds exactly voters x k; any other total means a client submitted a
    malformed mask (a shifted, doubled or negative entry), and the sum is refused.  Compensating changes
    inside one group pass this check (it sees the sum only); the he backend checks each client's input."""
    from secprune.secagg.errors import ProtocolError

    dims = {"row": (-1,), "column": (-2,), "layer": (-2, -1)}[group]
    totals = counts.to(torch.int64).sum(dim=dims)
    bad = int((totals != voters * k).sum())
    if bad:
        worst = int((totals - voters * k).abs().max())
        raise ProtocolError(f"{name}: {bad} {group} groups of the summed masks do not hold {voters} x {k} votes "
                            f"(off by up to {worst}): a client submitted a malformed mask; result refused")


def _masked(layer: dict[str, torch.Tensor], update: ClientUpdate | None) -> dict[str, torch.Tensor]:
    assert update is not None
    return {n: pruned_weight(w, update.masks[n]) for n, w in layer.items()}
