"""FedSpaLLM rounds over a simulated federation (Bai et al., NAACL 2025, Algorithm 1).

All ``N`` clients are simulated over one copy of the model, decoder layer by decoder layer, as in
:mod:`secprune.federated`. One round ``t``:

1. the server samples ``L_i`` for every client (Eq. 8, :mod:`secprune.fedspallm.sampling`) and sends those
   layers of the current global model ``W_g`` (round 1: the dense model);
2. client ``i`` runs its calibration windows through its *local* model, Eq. 9: its own pruned version of the
   layers in ``L_i`` and the cached pre-trained dense weights elsewhere. For a layer ``j in L_i`` it
   collects SparseGPT's Hessian from the layer as received (one batched forward of the windows of all
   clients that sampled ``j``, each window credited to its owner), prunes every linear of the layer with
   SparseGPT including the OBS weight update, and sends the pruned weights and masks (line 13);
3. the server aggregates every matrix of layer ``j`` over the clients that sampled it: l0-norm aggregation
   (Eq. 5), then adaptive mask expansion (Eqs. 6-7) unless switched off; the result is the new global
   layer (lines 15-18). Clients never depend on the server inside a round, so the server can aggregate a
   layer as soon as its clients are done with it.

Later rounds start from the aggregated global layers (already at the target sparsity); SparseGPT then
re-selects a mask (mostly the zeros it received) and re-fits the kept weights on each client's data.

Without layer sampling, round 1 of client ``i`` is exactly client ``i`` pruning its model alone with
SparseGPT ("standalone" in the paper's Tables 1-3); the driver can keep those models for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from secprune.capture import first_layer_inputs, layer_kwargs, run_layer
from secprune.checkpoint import StepCheckpoint, fingerprint, model_id
from secprune.fedspallm.aggregate import DEFAULT_CLIP_FACTOR, FixedPoint, aggregate_matrix
from secprune.fedspallm.comm import CommLog
from secprune.fedspallm.sampling import schedule as make_schedule
from secprune.methods import Method, SparseGPT
from secprune.model import decoder_layers, prunable_linears
from secprune.secagg import SecureSum, make_summer
from secprune.topk import priority


@dataclass
class FedSpaSpec:
    sparsity: float
    rounds: int = 1
    expansion: bool = True
    layer_sampling: bool = False
    resources: list[float] = field(default_factory=list)  # fractions of the layers per round (Eq. 8)
    local_group: str = "layer"  # SparseGPT's comparison group inside each 128-column block (layer = original)
    seed: int = 0
    batch_size: int = 8
    method: Method | None = None  # default: SparseGPT with the OBS weight update
    fixed_point_bits: int = 16  # B: fixed-point scale 2^B / bound for the secure sums of Eq. 5
    clip_factor: float = DEFAULT_CLIP_FACTOR  # bound = clip_factor * max|W| of the layer the server sent
    value_bytes: int = 4  # bytes per transmitted weight value (communication accounting)

    def local_method(self) -> Method:
        return self.method if self.method is not None else SparseGPT(update=True)


@dataclass
class FedSpaResult:
    weights: dict[str, torch.Tensor]  # final global matrices ("layers.3.mlp.up_proj"), 0 where pruned
    masks: dict[str, torch.Tensor]  # final global masks, True = pruned
    counts: dict[str, torch.Tensor]  # C_j of Eq. 6 in the last round that aggregated the matrix
    participants: dict[str, int]  # N of that aggregation (clients that sampled the layer)
    schedule: list[list[list[int]]]  # schedule[t][i] = layers of client i in round t
    standalone: dict[int, dict[str, torch.Tensor]]  # round-1 local models of the kept clients
    communication: dict
    secagg: dict
    rounds: list[dict]  # per-round sparsity before / after expansion, Eq. 7's k, fixed-point error


class _Summers:
    """Secure summers per (number of participants, kind): a layer's sum runs over the clients that sampled it."""

    def __init__(self, backend: str, *, bits: int, seed: int, options: dict) -> None:
        self.backend, self.bits, self.seed, self.options = backend, bits, seed, options
        self.cache: dict[tuple[int, str], SecureSum] = {}

    def get(self, n: int, kind: str) -> SecureSum:
        if (n, kind) not in self.cache:
            max_value = 1 if kind == "mask" else 2 ** (self.bits + 1)
            self.cache[(n, kind)] = make_summer(self.backend, n_clients=n, max_value=max_value,
                                                seed=self.seed + (0 if kind == "mask" else 1), **self.options)
        return self.cache[(n, kind)]

    def accounting(self) -> dict[tuple[int, str], dict]:
        return {key: s.accounting() for key, s in self.cache.items()}

    def restore_accounting(self, state: dict[tuple[int, str], dict]) -> None:
        for (n, kind), st in state.items():  # a resumed run goes on counting the bytes sent before the crash
            self.get(n, kind).restore_accounting(st)

    def stats(self) -> dict:
        out = []
        for (n, kind), s in sorted(self.cache.items()):
            st = {k: v for k, v in s.stats().items() if k != "per_round"}
            out.append({"participants": n, "kind": kind, **st})
        return {"backend": self.backend, "fixed_point_bits": self.bits, "summers": out,
                "total_bytes": int(sum(s["total_bytes"] for s in out))}


def _sent(summer: SecureSum) -> dict[str, int]:
    return dict(summer.log.sent)


@torch.no_grad()
def fedspallm_prune(model, windows: torch.Tensor, parts: list[np.ndarray], *, spec: FedSpaSpec,
                    secure: str | None = None, secagg_options: dict | None = None,
                    keep_clients: tuple[int, ...] | list[int] = (), desc: str = "fedspallm",
                    progress: bool = True, checkpoint: Path | None = None,
                    on_layer: Callable[[int, int], None] | None = None) -> FedSpaResult:
    """Run ``spec.rounds`` rounds of FedSpaLLM over ``windows`` (n, seqlen) split into client index sets ``parts``.

    ``secure`` names a :func:`~secprune.secagg.make_summer` backend: the sums of Eq. 5 then go through it as
    fixed-point integers (``"none"`` = the plaintext summer, same code path); ``None`` aggregates in float.
    The model's weights are left dense; the global model is returned in ``FedSpaResult.weights``.
    With ``checkpoint`` (a folder) every (round, layer) step is saved there, and a rerun with the same data
    and configuration resumes after the last saved step. ``on_layer(t, l)`` is called after each step.
    """
    method = spec.local_method()
    n_clients = len(parts)
    device = next(model.parameters()).device
    owner = torch.full((windows.shape[0],), -1, dtype=torch.long)
    for i, idx in enumerate(parts):
        owner[torch.as_tensor(idx, dtype=torch.long)] = i
    if (owner < 0).any() or sum(len(p) for p in parts) != windows.shape[0]:
        raise ValueError("client partitions must cover every window exactly once")
    layers = decoder_layers(model)
    n_layers = len(layers)
    plan = make_schedule(resources=spec.resources, n_clients=n_clients, n_layers=n_layers, rounds=spec.rounds,
                         seed=spec.seed, sampling=spec.layer_sampling)
    summers = _Summers(secure, bits=spec.fixed_point_bits, seed=spec.seed, options=secagg_options or {}) \
        if secure is not None else None
    kwargs = layer_kwargs(model, windows[:1])
    comm = CommLog(n_clients=n_clients, value_bytes=spec.value_bytes)
    comm.model_entries = sum(lin.weight.numel() for layer in layers for lin in prunable_linears(layer).values())

    keep = [i for i in keep_clients if all(li in plan[0][i] for li in range(n_layers))]
    ckpt = StepCheckpoint(checkpoint, fingerprint(
        windows, parts, algorithm="fedspallm", model=model_id(model), secure=secure, secagg=secagg_options,
        keep=keep, method=[method.name, getattr(method, "update", None)],
        spec={k: v for k, v in vars(spec).items() if k != "method"}))

    global_w: dict[str, torch.Tensor] = {}  # aggregated matrices (absent = still dense)
    masks: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    participants: dict[str, int] = {}
    standalone: dict[int, dict[str, torch.Tensor]] = {i: {} for i in keep}
    summaries: list[list[dict]] = [[] for _ in range(spec.rounds)]  # per round: one dict per aggregated matrix

    def absorb(step: dict) -> None:  # one (round, layer) step's results into the run state
        global_w.update({k: v.to(device) for k, v in step["global"].items()})
        masks.update(step["masks"])
        counts.update(step["counts"])
        participants.update(step["participants"])
        for i, ws in step["standalone"].items():
            standalone[i].update(ws)
        summaries[step["round"]].extend(step["summaries"])

    start, inps = 0, None
    resumed = ckpt.load()
    if resumed is not None:
        start = resumed.step
        for st in resumed.steps:
            absorb(st)
        comm.load_state(resumed.extra["comm"])
        if summers is not None:
            summers.restore_accounting(resumed.extra["secagg"])
        if start % n_layers:
            inps = resumed.inps.to(device)

    for t in range(start // n_layers, spec.rounds):
        sched = plan[t]
        first = start % n_layers if t == start // n_layers else 0
        if first == 0:
            inps = first_layer_inputs(model, windows, batch_size=spec.batch_size)
        bar = tqdm(range(first, n_layers), desc=f"{desc} round {t + 1}/{spec.rounds}", disable=not progress,
                   initial=first, total=n_layers)
        for li in bar:
            layer, kw = layers[li], kwargs[li]
            lins = prunable_linears(layer)
            dense = {n: lin.weight.data for n, lin in lins.items()}
            received = {n: global_w.get(f"layers.{li}.{n}", dense[n]) for n in lins}
            clients = [i for i in range(n_clients) if li in sched[i]]
            slot = {i: s for s, i in enumerate(clients)}

            # Algorithm 1 line 6: the sampled layer goes to its clients
            for i in clients:
                for n in lins:
                    full = f"layers.{li}.{n}"
                    comm.download(round=t, client=i, numel=dense[n].numel(),
                                  kept=None if full not in masks else int((~masks[full]).sum()))

            # line 9-11: Hessians from the received layer, every sampled client's windows in one batched pass
            outs = torch.empty_like(inps)
            results: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in lins}
            if clients:
                for n, lin in lins.items():
                    lin.weight.data = received[n]
                idx_part = np.sort(np.concatenate([parts[i] for i in clients]))
                stats: dict[str, torch.Tensor | None] = {}
                if method.needs_data:
                    stats = _collect_stats(method, layer, lins, inps, kw, idx_part=idx_part,
                                           owner_slot=torch.tensor([slot.get(int(o), -1) for o in owner]),
                                           n_slots=len(clients), batch_size=spec.batch_size, device=device)
                # line 11-12: each sampled client prunes with SparseGPT (+ OBS update)
                for n in lins:
                    prio = priority(shape=tuple(dense[n].shape), group=spec.local_group, seed=spec.seed,
                                    tag=f"local:{li}.{n}")
                    for i in clients:
                        st = stats[n][slot[i]] if stats.get(n) is not None else None
                        res = method.prune(received[n], st, sparsity=spec.sparsity, group=spec.local_group,
                                           prio=prio)
                        w = res.weight if res.weight is not None else received[n].masked_fill(res.mask, 0.0)
                        w = w.to(dense[n].dtype).masked_fill(res.mask.to(w.device), 0.0)
                        results[n].append((w, res.mask.to(w.device)))
                # Eq. 9: next-layer inputs from each sampled client's own pruned layer
                for i in clients:
                    for n, lin in lins.items():
                        lin.weight.data = results[n][slot[i]][0]
                    _forward(layer, inps, parts[i], kw, spec.batch_size, outs)
            others = [i for i in range(n_clients) if i not in slot]
            if others:  # Eq. 9: unsampled layers stay dense at the client
                for n, lin in lins.items():
                    lin.weight.data = dense[n]
                _forward(layer, inps, np.sort(np.concatenate([parts[i] for i in others])), kw,
                         spec.batch_size, outs)
            for n, lin in lins.items():
                lin.weight.data = dense[n]

            # line 13: uploads; lines 15-18: server aggregation of this layer
            step: dict = {"round": t, "global": {}, "masks": {}, "counts": {}, "participants": {},
                          "standalone": {i: {} for i in keep}, "summaries": []}
            for n in lins:
                full = f"layers.{li}.{n}"
                if not clients:
                    continue
                ws = [w for w, _ in results[n]]
                ms = [m for _, m in results[n]]
                for i, m in zip(clients, ms, strict=True):
                    comm.upload(round=t, client=i, numel=m.numel(), kept=int((~m).sum()))
                    if t == 0 and i in standalone:
                        step["standalone"][i][full] = ws[slot[i]].to("cpu").clone()
                code, wsum, msum, before = None, None, None, {}
                if summers is not None:
                    bound = spec.clip_factor * float(received[n].abs().max())
                    code = FixedPoint(bits=spec.fixed_point_bits, bound=bound if bound > 0 else 1.0)
                    wsum, msum = summers.get(len(clients), "weight"), summers.get(len(clients), "mask")
                    before = {"w": _sent(wsum), "m": _sent(msum)}
                agg = aggregate_matrix(weights=ws, pruned=ms, sparsity=spec.sparsity, expansion=spec.expansion,
                                       seed=spec.seed, name=full, code=code, weight_summer=wsum, mask_summer=msum)
                if summers is not None:
                    for key, s in (("w", wsum), ("m", msum)):
                        after = _sent(s)
                        for k, i in enumerate(clients):
                            party = f"client{k}"
                            comm.secure_upload(round=t, client=i,
                                               nbytes=after.get(party, 0) - before[key].get(party, 0))
                step["global"][full] = agg.weight.to(dense[n].dtype)  # stays on the device: absorb() uses it
                step["masks"][full] = agg.mask.cpu()
                # C_j <= N: int16 instead of int64 makes the counts 4x smaller in memory and checkpoints
                step["counts"][full] = agg.counts.to(torch.int16 if len(clients) < 2**15 else torch.int32).cpu()
                step["participants"][full] = len(clients)
                step["summaries"].append({"numel": agg.mask.numel(), "pruned": int(agg.mask.sum()),
                                          "intersection_sparsity": agg.intersection_sparsity, "k": agg.k,
                                          "max_abs_error": agg.max_abs_error, "clipped": agg.clipped})
            absorb(step)
            inps = outs
            del results
            ckpt.save(t * n_layers + li, inps, step,
                      extra=lambda: {"comm": comm.state(), "secagg": summers.accounting() if summers else {}})
            if on_layer is not None:
                on_layer(t, li)

    round_logs = [_round_log(t, plan[t], summaries[t], n_layers=n_layers, expansion=spec.expansion)
                  for t in range(spec.rounds)]
    for mask in masks.values():
        comm.final_download(numel=mask.numel(), kept=int((~mask).sum()))
    secagg = summers.stats() if summers is not None else {"backend": None}
    if summers is not None:
        secagg["max_abs_error"] = max(r["fixed_point_max_abs_error"] for r in round_logs)
        secagg["clipped_entries"] = sum(r["fixed_point_clipped"] for r in round_logs)
        secagg["clip_factor"] = spec.clip_factor
        secagg["error_bound_note"] = "per entry <= bound / 2^(bits+1), bound = clip_factor * max|W| per matrix"
    return FedSpaResult({k: v.to("cpu") for k, v in global_w.items()}, masks, counts, participants, plan,
                        standalone, comm.summary(), secagg, round_logs)


def _round_log(t: int, sched: list[list[int]], summ: list[dict], *, n_layers: int, expansion: bool) -> dict:
    """Sparsity before (clients' intersection) and after expansion, Eq. 7's k and fixed-point error of round t."""
    numel = max(sum(a["numel"] for a in summ), 1)
    return {
        "round": t,
        "layers_per_client": [len(x) for x in sched],
        "clients_per_layer": [sum(li in x for x in sched) for li in range(n_layers)],
        "sparsity_intersection": sum(a["intersection_sparsity"] * a["numel"] for a in summ) / numel,
        "sparsity": sum(a["pruned"] for a in summ) / numel,
        "expansion_k_total": int(sum(max(a["k"], 0) for a in summ)) if expansion else 0,
        "fixed_point_max_abs_error": max((a["max_abs_error"] for a in summ), default=0.0),
        "fixed_point_clipped": int(sum(a["clipped"] for a in summ)),
    }


def _collect_stats(method: Method, layer, lins: dict, inps: torch.Tensor, kw: dict, *, idx_part: np.ndarray,
                   owner_slot: torch.Tensor, n_slots: int, batch_size: int, device) -> dict[str, torch.Tensor]:
    """One batched forward of the windows ``idx_part``; each window's statistics go to its owner's slot.

    Linears that receive the very same input tensor (q/k/v, gate/up) share one statistics tensor: it is
    accumulated once (the values are identical, so this only saves time).
    """
    stats = {n: method.new_stats(n_clients=n_slots, in_features=lin.in_features, device=device)
             for n, lin in lins.items()}
    alias: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []  # inputs of the current chunk (kept alive: identity is safe)
    current: dict[str, torch.Tensor | None] = {"owner": None}
    handles = []
    for n, lin in lins.items():
        def hook(_mod, inp, _out, n=n):
            x = inp[0]
            for t, other in seen:
                if t is x:
                    alias[n] = other
                    return
            seen.append((x, n))
            method.accumulate(stats[n], x.detach(), current["owner"])
        handles.append(lin.register_forward_hook(hook))
    try:
        for s in range(0, len(idx_part), batch_size):
            chunk = torch.as_tensor(idx_part[s:s + batch_size])
            current["owner"] = owner_slot[chunk]
            run_layer(layer, inps[chunk], kw)
            seen.clear()
    finally:
        for h in handles:
            h.remove()
    for n, other in alias.items():
        stats[n] = stats[other]
    return stats


def _forward(layer, inps: torch.Tensor, idx: np.ndarray, kw: dict, batch_size: int, out: torch.Tensor) -> None:
    for s in range(0, len(idx), batch_size):
        chunk = torch.as_tensor(idx[s:s + batch_size])
        out[chunk] = run_layer(layer, inps[chunk], kw)


def apply_weights(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load matrices into the model; returns the previous tensors so that ``restore_weights`` can undo it."""
    from secprune.model import all_prunable

    lins = all_prunable(model)
    backup = {}
    for name, w in weights.items():
        backup[name] = lins[name].weight.data
        lins[name].weight.data = w.to(backup[name].device, backup[name].dtype)
    return backup


def restore_weights(model, backup: dict[str, torch.Tensor]) -> None:
    from secprune.model import all_prunable

    lins = all_prunable(model)
    for name, w in backup.items():
        lins[name].weight.data = w
