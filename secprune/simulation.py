"""In-process driver: every client of a strategy simulated over one copy of the model.

Per task (decoder layer): each participant's windows run through the layer in batches of their own (as in
its own process) and collect its statistics, then its :meth:`~secprune.strategy.Strategy.client_step`
runs and the statistics are dropped (one client's Hessians in memory at a time, not m);
the submitted vectors go through the secure summers (or plaintext sums); the server step sees only the
sums; then the windows move on, grouped by the weights their owners continue with. Every step can be
checkpointed, so an interrupted run resumes where it stopped. The Flower driver (:mod:`secprune.flower`)
runs the same strategies with each client in its own process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from secprune.checkpoint import StepCheckpoint, fingerprint, model_id
from secprune.masks import MaskSet
from secprune.replay import Replay, check_parts
from secprune.secagg import ProtocolError, SecureSum, Session
from secprune.secagg.he_validation import Rule
from secprune.strategy import ClientUpdate, Kind, Strategy, Task


class Summers(Protocol):
    """Where a sum over ``n`` participants of one kind of vector goes (None: a plaintext sum)."""

    def get(self, n: int, kind: Kind) -> SecureSum | None: ...
    def accounting(self) -> dict: ...
    def restore_accounting(self, state: dict) -> None: ...


class OneSummer:
    """Every sum through one summer built for all clients (FedPrLLM: every client takes part in every task)."""

    def __init__(self, summer: SecureSum) -> None:
        self.summer = summer

    def get(self, n: int, kind: Kind) -> SecureSum:
        return self.summer

    def accounting(self) -> dict:
        return self.summer.accounting()

    def restore_accounting(self, state: dict) -> None:
        self.summer.restore_accounting(state)


class PlainSums:
    """No summer: plaintext sums (float vectors need these)."""

    def get(self, n: int, kind: Kind) -> None:
        return None

    def accounting(self) -> dict:
        return {}

    def restore_accounting(self, state: dict) -> None:
        return None


@dataclass
class Simulated:
    strategy: Strategy
    client_masks: MaskSet | None  # every client's local masks (``record_masks``)
    kept: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # round-0 own weights of ``keep``


def _plain_sum(vectors: list, kind: Kind) -> torch.Tensor:
    if kind.is_float:
        return torch.stack([torch.as_tensor(v) for v in vectors]).sum(0)
    return torch.stack([torch.from_numpy(np.asarray(v).astype(np.int64)) for v in vectors]).sum(0)


class Sessions:
    """Secure-aggregation sessions of a run: one key agreement covers every task of a strategy's session
    scope (FedPrLLM: the whole model, one epoch per layer; FedSpaLLM: one layer), per kind of vector."""

    def __init__(self, summers: Summers, strategy: Strategy, tasks: list[Task], shapes: Callable[[int], dict]):
        self.summers, self.strategy, self.tasks, self.shapes = summers, strategy, tasks, shapes
        self.open: dict[tuple[str, str], tuple[Session, list[int]]] = {}

    def _session(self, summer: SecureSum, task: Task, kind: Kind) -> tuple[Session, int]:
        scope = self.strategy.session_scope(task)
        key = (scope, kind.name)
        if key not in self.open or task.step not in self.open[key][1]:
            steps = []  # this task and the consecutive ones of the same scope still to run
            for t in self.tasks[self.tasks.index(task):]:
                if self.strategy.session_scope(t) != scope:
                    break
                steps.append(t.step)
            epochs, rules = [], {}
            for step in steps:
                layer = self.tasks[step].layer  # a task's step is its position in the plan
                shapes = self.shapes(layer)
                epochs.append((f"layers.{layer}", {f"layers.{layer}.{n}": int(np.prod(s)) for n, s in shapes.items()}))
                for n, s in shapes.items():
                    rule = self.strategy.input_rule(self.tasks[step], kind, tuple(s))
                    if rule is not None:
                        rules[f"layers.{layer}.{n}"] = Rule.decode(rule)
            label = scope if len(self.strategy.kinds(task)) == 1 else f"{scope}/{kind.name}"
            self.open[key] = (summer.open_session(label, epochs, rules=rules), steps)
        session, steps = self.open[key]
        return session, steps.index(task.step)

    def sums(self, task: Task, updates: dict[int, ClientUpdate], shapes: dict[str, torch.Size]
             ) -> tuple[dict[str, dict], dict[int, int] | None]:
        """Every (matrix, kind) sum of one task, and the bytes each participant sent doing it (None: no summer)."""
        sums: dict[str, dict] = {n: {} for n in shapes}
        sent: dict[int, int] | None = None
        prefix = len(f"layers.{task.layer}.")
        for kind in self.strategy.kinds(task):
            summer = self.summers.get(len(task.clients), kind)
            if summer is None:
                for n, shape in shapes.items():
                    sums[n][kind.name] = _plain_sum([updates[i].vectors[n][kind.name] for i in task.clients],
                                                    kind).reshape(shape)
                continue
            session, epoch = self._session(summer, task, kind)
            before = dict(summer.log.sent)
            totals = session.sum_epoch(epoch, lambda k, name, kind=kind.name: updates[task.clients[k]].vectors[
                name[prefix:]][kind])
            if getattr(summer, "rejected", None):  # every client here runs this code: a failed proof is a bug
                raise ProtocolError(f"layer {task.layer}: inputs rejected by validation: "
                                    + "; ".join(f"client {task.clients[k]} ({why})"
                                                for k, why in sorted(summer.rejected.items())))
            sent = sent if sent is not None else dict.fromkeys(task.clients, 0)
            for k, i in enumerate(task.clients):
                sent[i] += summer.log.sent.get(f"client{k}", 0) - before.get(f"client{k}", 0)
            for n, shape in shapes.items():
                sums[n][kind.name] = totals[f"layers.{task.layer}.{n}"].reshape(shape)
        return sums, sent


@torch.no_grad()
def simulate(model, windows: torch.Tensor, parts: Sequence[np.ndarray], strategy: Strategy, *,
             summers: Summers, batch_size: int = 8, checkpoint: Path | None = None,
             keep: Sequence[int] = (), record_masks: bool | int = False, desc: str = "prune", progress: bool = True,
             on_step: Callable[[Task], None] | None = None, fingerprint_extra: dict | None = None) -> Simulated:
    """Run ``strategy`` over ``windows`` (n, seqlen) split into client index sets ``parts``. ``record_masks``
    keeps every client's local masks (True) or those of the first ``record_masks`` clients (an int)."""
    parts = [np.asarray(p) for p in parts]
    m = len(parts)
    check_parts(parts, windows.shape[0])
    replay = Replay(model, windows, batch_size=batch_size)
    tasks = strategy.tasks(n_layers=len(replay.layers))
    method = strategy.method  # --dp statistics: a budget per client, shared by the layers it visits
    method.plan(visits=max(sum(i in t.clients for t in tasks) for i in range(m)))
    ckpt = StepCheckpoint(checkpoint, fingerprint(windows, parts, model=model_id(model), keep=list(keep),
                                                  record_masks=record_masks, **strategy.fingerprint(),
                                                  **(fingerprint_extra or {})))
    recorded = m if record_masks is True else int(record_masks)
    client_masks = MaskSet(recorded) if recorded else None
    kept: dict[int, dict[str, torch.Tensor]] = {i: {} for i in keep}

    def absorb(st: dict) -> None:
        strategy.load_step(st["server"])
        if client_masks is not None:
            client_masks.packed.update(st["packed"])
            client_masks.shapes.update(st["shapes"])
        for i, ws in st["kept"].items():
            kept[i].update(ws)

    start = 0
    resumed = ckpt.load()
    if resumed is not None:
        start = resumed.step
        for st in resumed.steps:
            absorb(st)
        strategy.load_extra(resumed.extra.get("strategy", {}))
        method.load_state(resumed.extra.get("method", {}))
        summers.restore_accounting(resumed.extra.get("secagg", {}))
        if start < len(tasks) and not tasks[start].restart:
            replay.resume(tasks[start].layer, resumed.inps)

    sessions = Sessions(summers, strategy, tasks,
                        lambda li: {n: lin.weight.shape for n, lin in replay.linears(li).items()})
    bar = tqdm(total=len(tasks), initial=start, desc=desc, disable=not progress)
    for pos in range(start, len(tasks)):
        task = tasks[pos]
        if task.restart:
            replay.start()
        assert replay.layer == task.layer, (replay.layer, task.layer)
        lins = replay.linears()
        dense = {n: lin.weight for n, lin in lins.items()}
        received = {n: w.to(dense[n].device) for n, w in (strategy.received(task) or {}).items()}
        layer = {n: received.get(n, dense[n]) for n in lins}
        updates = {}
        for i in task.clients:  # one client's statistics at a time: memory of one client, not of m
            stats = replay.statistics(method.for_client(i), groups=[parts[i]], weights=received or None)
            updates[i] = strategy.client_step(task, layer=layer, stats={
                n: None if s is None else s[0] for n, s in stats.items()})
            del stats
        sums, sent = sessions.sums(task, updates, {n: w.shape for n, w in layer.items()})
        server = strategy.server_step(task, sums, layer=layer, sent_bytes=sent,
                                      uploads={i: u.upload for i, u in updates.items() if u.upload is not None})
        if hasattr(strategy, "diagnose"):
            strategy.diagnose(task, server, updates)
        names = [f"layers.{task.layer}.{n}" for n in lins]
        step = {"server": server, "packed": {}, "shapes": {}, "kept": {i: {} for i in kept}}
        for i, u in updates.items():
            if client_masks is not None and i < recorded:
                for n, full in zip(lins, names, strict=True):
                    client_masks.put(full, i, u.masks[n])
            if i in kept and task.round == 0 and u.own is not None:
                for n, full in zip(lins, names, strict=True):
                    step["kept"][i][full] = u.own[n].to("cpu", copy=True)
                kept[i].update(step["kept"][i])
        if client_masks is not None:
            step["packed"] = {full: client_masks.packed[full] for full in names if full in client_masks.packed}
            step["shapes"] = {full: client_masks.shapes[full] for full in names if full in client_masks.shapes}
        following = tasks[pos + 1] if pos + 1 < len(tasks) else None
        if following is not None and not following.restart:  # the last layer of a round feeds nothing
            # one owner's next weights at a time (a generator): m pruned copies of the layer would be alive at
            # once in a list (3 GB for 16 clients on Qwen2.5-1.5B)
            replay.advance((parts[i], strategy.next_weights(task, update=updates.get(i), layer=layer))
                           for i in range(m))
        del updates
        ckpt.save(task.step, replay.inps, step,
                  extra=lambda: {"strategy": strategy.extra_state(), "secagg": summers.accounting(),
                                 "method": method.state()})
        bar.update(1)
        if on_step is not None:
            on_step(task)
    bar.close()
    return Simulated(strategy, client_masks, {i: ws for i, ws in kept.items() if ws})
