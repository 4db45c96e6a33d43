"""FedSpaLLM (Bai et al., NAACL 2025, Algorithm 1) as a client step and a server step.

Round ``t``, decoder layer ``j``: the server sends layer ``j`` of the current global model ``W_g`` (round 1:
the dense layer) to the clients that sampled it (Eq. 8, line 6). Each prunes it with SparseGPT and its OBS
update on its own windows, which reach layer ``j`` through its local model (Eq. 9: its own pruned layers
of this round where it sampled them, the dense layers elsewhere), and submits two vectors per matrix
(line 13): its 0/1 kept mask ``M_i`` and ``M_i * W_i`` (fixed-point integers under secure aggregation,
floats in a plaintext simulation). From the two sums the server computes Eq. 5 (l0-norm average), Eq. 6
(``C_j = N - sum M_i``) and Eq. 7 (adaptive mask expansion): the new global layer (lines 15-18). Clients
never wait for the server inside a round; later rounds start again from the embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from secprune.fedspallm.aggregate import FixedPoint, LayerAggregate, l0_sums, server_matrix, tie_decided
from secprune.fedspallm.comm import CommLog
from secprune.fedspallm.sampling import schedule as make_schedule
from secprune.methods import Method
from secprune.strategy import ClientUpdate, Kind, Strategy, Task
from secprune.topk import priority


class FedSpaLLM(Strategy):
    name = "fedspallm"

    def __init__(self, *, method: Method, n_clients: int, sparsity: float, rounds: int = 1, expansion: bool = True,
                 layer_sampling: bool = False, resources: list[float] | None = None, local_group: str = "layer",
                 seed: int = 0, fixed_point_bits: int | None = None, clip_factor: float = 2.0,
                 value_bytes: int = 4, magnitude_ties: bool = True) -> None:
        self.method, self.n_clients, self.sparsity, self.rounds = method, n_clients, sparsity, rounds
        self.expansion, self.layer_sampling, self.resources = expansion, layer_sampling, list(resources or [])
        self.local_group, self.seed, self.clip_factor = local_group, seed, clip_factor
        self.magnitude_ties = magnitude_ties  # Eq. 7 ties: smaller |W_g| first (False: seeded random only)
        self.bits = fixed_point_bits  # None: plaintext float sums (simulation without secure aggregation)
        self.plan: list[list[list[int]]] = []
        self.global_w: dict[str, torch.Tensor] = {}  # aggregated matrices (absent = still dense)
        self.masks: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.participants: dict[str, int] = {}
        self.summaries: list[list[dict]] = [[] for _ in range(rounds)]  # per round: one dict per matrix
        self.comm = CommLog(n_clients=n_clients, value_bytes=value_bytes)

    def tasks(self, *, n_layers: int) -> list[Task]:
        self.plan = make_schedule(resources=self.resources, n_clients=self.n_clients, n_layers=n_layers,
                                  rounds=self.rounds, seed=self.seed, sampling=self.layer_sampling)
        return [Task(step=t * n_layers + li, round=t, layer=li, restart=li == 0,
                     clients=[i for i in range(self.n_clients) if li in self.plan[t][i]])
                for t in range(self.rounds) for li in range(n_layers)]

    def received(self, task: Task) -> dict[str, torch.Tensor] | None:
        prefix = f"layers.{task.layer}."
        got = {full[len(prefix):]: w for full, w in self.global_w.items() if full.startswith(prefix)}
        return got or None

    def kinds(self, task: Task) -> list[Kind]:
        if self.bits is None:
            return [Kind("mask", 1), Kind("weight", 0, is_float=True)]
        return [Kind("mask", 1), Kind("weight", 2 ** (self.bits + 1))]

    def code(self, weight: torch.Tensor) -> FixedPoint:
        """The public fixed-point code of a matrix, from the layer the server sent (known to both sides)."""
        bound = self.clip_factor * float(weight.abs().max())
        return FixedPoint(bits=self.bits, bound=bound if bound > 0 else 1.0)

    # --- client side
    def client_step(self, task: Task, *, layer: dict[str, torch.Tensor], stats: dict[str, torch.Tensor | None]
                    ) -> ClientUpdate:
        """Lines 9-13: SparseGPT with the OBS update on the received layer; two vectors per matrix."""
        masks, own, vectors, upload, clipped = {}, {}, {}, {}, {}
        for n, received in layer.items():
            prio = priority(shape=tuple(received.shape), group=self.local_group, seed=self.seed,
                            tag=f"local:{task.layer}.{n}")
            res = self.method.prune(received, stats.get(n), sparsity=self.sparsity, group=self.local_group,
                                    prio=prio)
            w = res.weight if res.weight is not None else received.masked_fill(res.mask, 0.0)
            w = w.to(received.dtype).masked_fill(res.mask.to(w.device), 0.0)
            mask = res.mask.to(w.device)
            kept = ~mask.detach().to("cpu", torch.bool)
            x = torch.where(kept, w.detach().to("cpu", torch.float64), torch.zeros((), dtype=torch.float64))
            if self.bits is None:
                weight_vec = x.reshape(-1)
            else:
                weight_vec, clipped[n] = self.code(received).encode(x)
            vectors[n] = {"mask": kept.reshape(-1).numpy().astype(np.uint8), "weight": weight_vec}
            masks[n], own[n], upload[n] = mask, w, int(kept.sum())
        return ClientUpdate(vectors=vectors, masks=masks, own=own, upload=upload, clipped=clipped)

    def next_weights(self, task: Task, *, update: ClientUpdate | None, layer: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor] | None:
        return None if update is None else update.own  # Eq. 9: own pruned layer if sampled, else dense

    # --- server side
    def server_step(self, task: Task, sums: dict[str, dict[str, np.ndarray | torch.Tensor]], *,
                    layer: dict[str, torch.Tensor], uploads: dict[int, dict[str, int]] | None = None,
                    sent_bytes: dict[int, int] | None = None) -> dict:
        """Lines 15-18 for every matrix of the layer: Eq. 5 from the two sums, then Eqs. 6-7."""
        t, n_part = task.round, len(task.clients)
        self._unmasked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        step: dict = {"round": t, "global": {}, "masks": {}, "counts": {}, "participants": {}, "summaries": []}
        for n, sent in layer.items():  # line 6: what each participant received (accounting)
            full = f"layers.{task.layer}.{n}"
            for i in task.clients:
                self.comm.download(round=t, client=i, numel=sent.numel(),
                                   kept=None if full not in self.masks else int((~self.masks[full]).sum()))
        for i in task.clients:
            for n, kept in (uploads or {}).get(i, {}).items():
                self.comm.upload(round=t, client=i, numel=layer[n].numel(), kept=kept)
            if sent_bytes is not None:
                self.comm.secure_upload(round=t, client=i, nbytes=sent_bytes.get(i, 0))
        for n, s in sums.items():
            full = f"layers.{task.layer}.{n}"
            kept_count = torch.as_tensor(np.asarray(s["mask"]).astype(np.int64))
            if self.bits is None:
                weighted = torch.as_tensor(s["weight"])
            else:
                weighted = self.code(layer[n]).decode_sum(np.asarray(s["weight"]).reshape(-1), n_part)
                weighted = weighted.view(kept_count.shape)
            agg = self._aggregate(weighted, kept_count, n_part, layer[n].dtype, full)
            if self.bits is not None:  # for diagnose() (fixed-point sums only); not part of the state
                self._unmasked[full] = (agg.average, kept_count)
            mask = agg.mask
            step["global"][full] = agg.weight.to(layer[n].device)
            step["masks"][full] = mask.cpu()
            # C_j <= N: int16 instead of int64 makes the counts 4x smaller in memory and checkpoints
            step["counts"][full] = agg.counts.to(torch.int16 if n_part < 2**15 else torch.int32).cpu()
            step["participants"][full] = n_part
            step["summaries"].append({"numel": mask.numel(), "pruned": int(mask.sum()),
                                      "intersection_sparsity": agg.intersection_sparsity, "k": agg.k,
                                      "tie_decided": tie_decided(counts=agg.counts, n_clients=n_part, mask=mask)
                                      if self.expansion else 0,
                                      "max_abs_error": 0.0, "clipped": 0, "max_abs_error_masked": 0.0,
                                      "mask_flips": 0})
        self.load_step(step)
        return step

    def _aggregate(self, weighted: torch.Tensor, kept_count: torch.Tensor, n_part: int, dtype: torch.dtype,
                   full: str) -> LayerAggregate:
        return server_matrix(weighted_sum=weighted, kept_count=kept_count, n_clients=n_part, sparsity=self.sparsity,
                             dtype=dtype, expansion=self.expansion, seed=self.seed, name=full,
                             magnitude_ties=self.magnitude_ties)

    def diagnose(self, task: Task, step: dict, updates: dict[int, ClientUpdate]) -> None:
        """Simulation only (it sees every client): error of the fixed-point sums against float Eq. 5, before
        masking (the averages) and after (the global matrix: Eq. 7's ties on the quantized ``|W_g|`` can
        pick other entries than the float ``|W_g|`` would, ``mask_flips``)."""
        if self.bits is None or not updates:
            return
        parts = [updates[i] for i in task.clients]
        for rec, full in zip(step["summaries"], step["global"], strict=True):
            n = full.split(".", 2)[2]
            float_sum, float_count = l0_sums(weights=[u.own[n] for u in parts], pruned=[u.masks[n] for u in parts])
            secure, kept_count = self._unmasked.pop(full)  # read once: do not hold every layer's matrices
            if not torch.equal(kept_count, float_count):
                raise RuntimeError(f"{full}: secure mask count differs from the plaintext count")
            exact = self._aggregate(float_sum, float_count, len(parts), step["global"][full].dtype, full)
            rec["max_abs_error"] = float((secure.double() - exact.average.double()).abs().max()) \
                if secure.numel() else 0.0
            rec["clipped"] = sum(u.clipped.get(n, 0) for u in parts)
            rec["mask_flips"] = int((exact.mask != step["masks"][full]).sum())
            rec["max_abs_error_masked"] = float((step["global"][full].cpu().double() - exact.weight.double())
                                                .abs().max()) if secure.numel() else 0.0

    def load_step(self, state: dict) -> None:
        device = {k: v.device for k, v in self.global_w.items()}
        self.global_w.update({k: v.to(device.get(k, v.device)) for k, v in state["global"].items()})
        self.masks.update(state["masks"])
        self.counts.update(state["counts"])
        self.participants.update(state["participants"])
        self.summaries[state["round"]].extend(state["summaries"])

    def extra_state(self) -> dict:
        return {"comm": self.comm.state()}

    def load_extra(self, state: dict) -> None:
        self.comm.load_state(state["comm"])

    def fingerprint(self) -> dict:
        fp = {"algorithm": "fedspallm", "method": [self.method.name, getattr(self.method, "update", None)],
              "sparsity": self.sparsity, "rounds": self.rounds, "expansion": self.expansion,
              "layer_sampling": self.layer_sampling, "resources": self.resources, "local_group": self.local_group,
              "seed": self.seed, "fixed_point_bits": self.bits, "clip_factor": self.clip_factor,
              "magnitude_ties": self.magnitude_ties}
        return fp | self.method.fingerprint()
