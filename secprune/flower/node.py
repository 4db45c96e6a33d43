"""One client in its own process: its own data and model, its state on its own disk between messages.

Flower runs every message in a fresh ``flwr-clientapp`` process, so what a client must remember between
the stages of a run lives in an owner-only folder of its node (``--node-config "state-dir='...'"``,
default ``$SECPRUNE_CACHE/flower/<client>``): the inputs of its windows at the current decoder layer
(activations of its text), its last pruning result, the vectors it is about to upload, and its
secure-aggregation state (seeds and shares). The folder is deleted when the run finishes.

Node configuration (``flower-supernode --node-config``): ``client-id`` (its index; default
``partition-id``), either ``data`` (a UTF-8 file or folder of its private text) or ``partition-id`` and
``num-partitions`` (its share of a built-in public corpus, standing in for private data), ``keys`` (a
folder with its ``client<i>.pem`` and the pinned ``directory.json``, for pairwise and he), ``authority``
(the key that signed the directory: 64 hex digits or a file; default ``<keys>/authority.pub`` when present),
``secagg-colluders`` and ``secagg-min-contributors`` (what this client requires of every secure sum; the
defaults of ``secprune prune``), ``role`` (``"keyholder"`` for the he key holder) and ``state-dir``.

Besides the run's folder, the state folder holds ``ledger.json``: the digests of every input this client has
released into a secure sum, kept across runs so that no server can ask for the same input twice
(:mod:`secprune.secagg.ledger`).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.outdir import open_private, private_dir
from secprune.strategy import ClientUpdate, Task

if TYPE_CHECKING:  # the protocol stages import no torch: only the pruning step needs it
    import torch

    from secprune.replay import Replay


#: kinds of vector each algorithm submits (the strategies' ``kinds``; tests/test_flower.py checks they agree)
KINDS = {"fedprllm": ("mask",), "fedspallm": ("mask", "weight")}


def build_strategy(cfg: PruneConfig, *, secure: bool):
    """The run's strategy, the same object on the server and at every client."""
    from secprune.algorithms import algorithm

    return algorithm(cfg.algorithm).strategy(cfg, n_clients=cfg.clients, secure=secure)


@lru_cache(maxsize=2)
def _model(name: str):
    from secprune.model import load_model

    return load_model(name)


def _cache_dir() -> Path:
    return Path(os.environ.get("SECPRUNE_CACHE", Path.home() / ".cache" / "secprune"))


def task_from(spec: dict) -> Task:
    return Task(step=spec["step"], round=spec["round"], layer=spec["layer"], clients=list(spec["clients"]),
                restart=spec["restart"])


def task_spec(task: Task) -> dict:
    return {"step": task.step, "round": task.round, "layer": task.layer, "clients": list(task.clients),
            "restart": task.restart}


class ClientNode:
    """What one client holds for one run (model, own windows, files of its state)."""

    def __init__(self, *, cfg: PruneConfig, node_config, run_id: int, run_keys: str = "") -> None:
        self.cfg = cfg
        nc = dict(node_config)
        # Flower's simulation engine gives its nodes only partition-id / num-partitions; every `secprune
        # client` node names itself (client-id or role). Only simulated nodes take what the run config (the
        # server) says about keys and roles: a real client's keys and pinned directory are never the server's.
        simulated = "client-id" not in nc and "role" not in nc
        if simulated and cfg.secure_agg == "he" and nc.get("partition-id") == cfg.clients:
            nc["role"] = "keyholder"  # simulation engine: the extra node is the key holder
        self.role = str(nc.get("role", "client"))
        raw_id = nc.get("client-id", nc.get("partition-id"))
        if self.role == "client" and raw_id is None:
            raise UsageError("node config: a client needs client-id (or partition-id)")
        self.client = int(raw_id) if raw_id is not None else -1
        self.node_config, self.simulated = nc, simulated
        base = Path(str(nc.get("state-dir") or _cache_dir() / "flower" / f"{self.role}{max(self.client, 0)}"))
        self.base = private_dir(base)
        self.dir = private_dir(base / f"run-{run_id}")
        keys = nc.get("keys") or (run_keys if simulated else "")  # simulation: one folder, each its own key
        self.keys = Path(str(keys)) if keys else None
        self.authority = str(nc.get("authority") or "") or None
        # what this client requires of a secure sum: its own flags; a simulated node is the operator's own
        self._colluders = nc.get("secagg-colluders", cfg.secagg_colluders if simulated else None)
        self._contributors = nc.get("secagg-min-contributors", cfg.secagg_min_contributors if simulated else None)

    # --- this client's own security settings
    def threat(self, n_clients: int):
        from secprune.secagg.params import threat

        contributors = self._contributors
        try:
            return threat(n_clients, colluders=None if self._colluders in (None, "") else str(self._colluders),
                          min_contributors=None if contributors in (None, "") else int(contributors))
        except ValueError as exc:
            raise UsageError(f"node config: {exc}") from None

    def ledger(self):
        """This client's ledger of released inputs: kept across runs, beside the runs' folders; a simulated
        node's lives with its run (the operator holds every party of a simulation, as in ``secprune prune``)."""
        from secprune.secagg.ledger import Ledger

        return Ledger((self.dir if self.simulated else self.base) / "ledger.json")

    def kinds(self) -> set[str]:
        """The kinds of vector this run's strategy submits (the only kinds a stage may name; known without
        building the strategy, so protocol stages stay free of torch)."""
        return set(KINDS[self.cfg.algorithm])

    # --- data and model (loaded in every message's process; the model from the safetensors cache)
    @property
    def model(self):
        return _model(self.cfg.model)[0]

    @property
    def tokenizer(self):
        return _model(self.cfg.model)[1]

    def windows(self) -> torch.Tensor:
        """This client's own calibration windows, exactly those the simulation gives client ``client``."""
        import torch

        from secprune import calibration

        cfg = self.cfg
        if self.node_config.get("data"):
            counts = calibration.windows_per_client(cfg.nsamples, cfg.clients)
            return calibration.client_windows(self.tokenizer, str(self.node_config["data"]), client=self.client,
                                              n=counts[self.client], seqlen=cfg.seqlen, seed=cfg.seed)
        # a built-in public corpus standing in for private data: the simulation's draw, this client's share
        n_parts = int(self.node_config.get("num-partitions", cfg.clients))
        if n_parts != cfg.clients:
            raise UsageError(f"node config: num-partitions {n_parts} differs from the run's {cfg.clients} clients")
        calib = calibration.build(cfg, self.tokenizer)
        return calib.windows[torch.as_tensor(calib.parts[self.client])]

    # --- private state files
    def _path(self, name: str) -> Path:
        return self.dir / name

    def save(self, name: str, obj) -> None:
        path = self._path(name)
        tmp = path.with_name(path.name + ".tmp")
        with open_private(tmp) as f:  # 0600 even over a stale tmp left by a crash
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)

    def load(self, name: str, default=None):
        path = self._path(name)
        if not path.exists():
            return default
        with open(path, "rb") as f:  # our own owner-only file, written by save()
            return pickle.load(f)

    def save_vector(self, kind: str, name: str, vector: np.ndarray) -> None:
        folder = private_dir(self.dir / "vectors" / kind)
        with open_private(folder / f"{name}.npy") as f:  # a stage run again overwrites its vector
            np.save(f, vector)

    def vector(self, kind: str, name: str) -> np.ndarray:
        return np.load(self.dir / "vectors" / kind / f"{name}.npy", mmap_mode="r")

    def clear_vectors(self) -> None:
        shutil.rmtree(self.dir / "vectors", ignore_errors=True)

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- pruning
    def run_tasks(self, strategy, tasks: list[Task], *, received: dict[str, torch.Tensor],
                  broadcast: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
        """Run tasks back to back on this client's windows; the vectors to upload go to private files.

        ``broadcast`` is the server's answer to the task this client did last (iterative FedPrLLM); it is
        taken in first, so the client can move its windows to the next layer. Returns the upload sizes."""
        from secprune.replay import Replay

        replay = Replay(self.model, self.windows(), batch_size=self.cfg.batch_size)
        state = self.load("replay.pkl")
        last = self.load("last.pkl")
        if last is not None and broadcast:
            strategy.load_broadcast(last["task"], broadcast)
        if state is not None:
            replay.resume(state["layer"], state["inps"])
            if last is not None and not tasks[0].restart:  # finish the previous task: move to its next layer
                self._advance(replay, strategy, last["task"], last["update"])
        own = np.arange(replay.windows.shape[0])
        self.clear_vectors()
        uploads: dict[str, dict[str, int]] = {}
        # --dp statistics: this client's budget, spent across the run's stages (kept in its state folder); a
        # server that asks for a step again gets fresh noise from the same budget, and a refusal once it is spent
        method = strategy.method
        method.plan(visits=sum(self.client in t.clients for t in strategy.tasks(n_layers=len(replay.layers))))
        method.load_state(self.load("dp.pkl", {}))
        for k, task in enumerate(tasks):
            if task.restart:
                replay.start()
            if replay.layer != task.layer:
                raise RuntimeError(f"client {self.client}: windows at layer {replay.layer}, task is layer {task.layer}")
            lins = replay.linears()
            dense = {n: lin.weight for n, lin in lins.items()}
            got = {n[len(f"layers.{task.layer}."):]: w for n, w in received.items()
                   if n.startswith(f"layers.{task.layer}.")}
            layer = {n: got.get(n, dense[n]) for n in lins}
            update = None
            if self.client in task.clients:
                stats = replay.statistics(method, groups=[own], weights=got or None)
                if method.state():
                    self.save("dp.pkl", method.state())
                update = strategy.client_step(task, layer=layer, stats={
                    n: None if s is None else s[0] for n, s in stats.items()})
                for n, kinds in update.vectors.items():
                    for kind, v in kinds.items():
                        self.save_vector(kind, f"layers.{task.layer}.{n}", np.asarray(v))
                if update.upload is not None:
                    uploads[str(task.step)] = update.upload
            else:  # not sampled (FedSpaLLM layer sampling): zeros, which add nothing to the sums
                for n, w in layer.items():
                    for kind in strategy.kinds(task):
                        self.save_vector(kind.name, f"layers.{task.layer}.{n}",
                                         np.zeros(w.numel(), dtype=np.float64 if kind.is_float else np.uint8))
            if k + 1 < len(tasks) and not tasks[k + 1].restart:
                self._advance(replay, strategy, task, update, layer=layer)
            else:
                self.save("last.pkl", {"task": task, "update": _slim(update)})
        self.save("replay.pkl", {"layer": replay.layer, "inps": replay.inps.cpu()})
        return uploads

    def _advance(self, replay: Replay, strategy, task: Task, update: ClientUpdate | None,
                 layer: dict[str, torch.Tensor] | None = None) -> None:
        if layer is None:
            layer = {n: lin.weight for n, lin in replay.linears().items()}
        own = np.arange(replay.windows.shape[0])
        replay.advance([(own, strategy.next_weights(task, update=update, layer=layer))])


def _slim(update: ClientUpdate | None) -> ClientUpdate | None:
    """What the next message needs of a result: masks and own weights, not the uploaded vectors."""
    if update is None:
        return None
    return ClientUpdate(vectors={}, masks=update.masks, own=update.own, upload=update.upload)


def dumps(obj) -> str:
    return json.dumps(obj)
