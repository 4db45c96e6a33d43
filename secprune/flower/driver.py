"""The server's side of a distributed run: any strategy, secprune's own secure aggregation, over messages.

:class:`ServerRun` plays :class:`~secprune.strategy.Strategy` tasks with clients it reaches only
through a :class:`Transport` (Flower's Grid in :mod:`secprune.flower.server_app`; an in-process one in
tests). Tasks a client can do back to back (one-shot FedPrLLM: the whole model; FedSpaLLM: one round)
travel in one ``step`` message; the client's reply carries its secure-aggregation upload. Stages, one
Flower ``message_type`` each (``query.<stage>``):

``hello`` (client index of each node), ``he_context`` (the key holder's signed public context),
``advertise`` / ``share`` (pairwise setup: keys, then encrypted Shamir shares), ``step`` (prune; upload),
``consistency`` / ``unmask`` (pairwise: signed survivor set, then shares of the survivors' self masks and
the dropped clients' mask keys), ``he_verify`` (the key holder's share of every client's input checks),
``he_decrypt`` (the key holder adds the uploads both checks passed and decrypts verified sums), ``finish``
(clients delete their run state). The server holds the public model and sees only protocol bytes, upload
sizes and (``none``) the plaintext sums' inputs; never a client's text or tokens.

Secure-aggregation sessions: FedPrLLM runs one pairwise session for the whole model (one epoch per step
message: one for one-shot, one per layer for iterative); FedSpaLLM one session per round and kind, every
client submitting zeros for the layers it did not sample (the sums are the participants' sums).
A client that does not answer a stage in time has dropped; pairwise recovers while at least t of its
holders remain, and aborts (no output) below that.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from secprune import log
from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.flower.node import build_strategy, task_spec
from secprune.flower.records import unpack_vector
from secprune.model import decoder_layers, prunable_linears
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.strategy import Kind, Task


class Transport(Protocol):
    """Messages to nodes and their replies; a node that does not answer in time is absent from the result."""

    def nodes(self, *, expected: int, wait: float) -> list[int]: ...

    def exchange(self, stage: str, contents: dict[int, dict], *, timeout: float) -> dict[int, dict]: ...


class Refused(RuntimeError):
    """A client refused a stage (its reply carried an error)."""


@dataclass
class Wire:
    """Bytes per client and stage: Flower's serialized messages, and the protocol bytes inside them."""

    flower: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    protocol: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, client: int, stage: str, *, flower: int, protocol: int) -> None:
        self.flower[client][stage] += flower
        self.protocol[client][stage] += protocol

    def summary(self) -> dict:
        return {"flower_bytes": {c: dict(v) for c, v in self.flower.items()},
                "protocol_bytes": {c: dict(v) for c, v in self.protocol.items()}}


def protocol_bytes(content: dict) -> int:
    """Bytes of secure-aggregation protocol messages (and plaintext uploads) inside a content dict."""
    total = 0
    for v in content.values():
        if isinstance(v, bytes):
            total += len(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            total += sum(len(x) for x in v)
        elif isinstance(v, np.ndarray):
            total += v.nbytes
    return total


def batches(strategy, tasks: list[Task]) -> list[list[Task]]:
    """Consecutive tasks a client can run without hearing from the server travel in one step message."""
    out: list[list[Task]] = []
    for task in tasks:
        if out and not task.restart and not strategy.waits_for_server(out[-1][-1]):
            out[-1].append(task)
        else:
            out.append([task])
    return out


class ServerRun:
    """One distributed run of a strategy (server side)."""

    def __init__(self, transport: Transport, cfg: PruneConfig, extras: dict, *, model=None,
                 on_received: Callable[[str, int, dict], None] | None = None) -> None:
        from secprune.model import load_model

        self.t, self.cfg, self.extras = transport, cfg, extras
        self.model = model if model is not None else load_model(cfg.model)[0]
        self.secure = cfg.secure_agg
        self.strategy = build_strategy(cfg, secure=self.secure != "none")
        self.wire = Wire()
        self.on_received = on_received
        self.timeout = float(extras.get("stage-timeout", 600.0))
        self.node_of: dict[int, int] = {}
        self.key_holder: int | None = None
        self.alive: set[int] = set()
        self.sessions: dict[str, dict] = {}  # scope -> {"kinds": {kind: PairwiseServer}, "epoch": int}
        self.stage_log: list[dict] = []
        self.refused: list[dict] = []  # messages refused by the protocol, with their sender (dropped)
        self.excluded: dict[int, str] = {}  # clients excluded as cheaters, with the reason
        self.step_timing: list[dict] = []  # per step message: each client's own model load / prune / upload time

    # --- messaging
    def _send(self, stage: str, contents: dict[int, dict], *, required: bool = False) -> dict[int, dict]:
        """``contents`` by client index (-1: the key holder); replies by client index, dropped ones absent."""
        from secprune.flower.records import to_record, wire_bytes

        by_node = {self.node_of[c]: content for c, content in contents.items()}
        t0 = time.perf_counter()
        raw = self.t.exchange(stage, by_node, timeout=self.timeout)
        client_of = {n: c for c, n in self.node_of.items()}
        replies = {}
        for node, content in raw.items():
            c = client_of[node]
            if isinstance(content, Exception):
                if required or c < 0:
                    raise Refused(f"{'key holder' if c < 0 else f'client {c}'} refused stage {stage}: {content}")
                log.warn(f"stage {stage}: client {c} refused and is dropped: {content}")
                self.refused.append({"stage": stage, "client": c, "reason": str(content)})
                continue
            replies[c] = content
            self.wire.add(c, stage, flower=wire_bytes(to_record(content)) + wire_bytes(to_record(contents[c])),
                          protocol=protocol_bytes(content) + protocol_bytes(contents[c]))
            if self.on_received is not None:
                self.on_received(stage, c, content)
        refused = {r["client"] for r in self.refused if r["stage"] == stage}
        missing = sorted(set(contents) - set(replies) - refused)
        self.alive -= refused
        self.stage_log.append({"stage": stage, "sent": len(contents), "replies": len(replies),
                               "dropped": missing, "seconds": time.perf_counter() - t0})
        if missing:
            if required:
                raise SecAggAbortError(f"stage {stage}: no answer from {missing}; run aborted")
            log.warn(f"stage {stage}: no answer from clients {missing} (dropped)")
            self.alive -= set(missing)
        return replies

    # --- the run
    def connect(self) -> None:
        expected = self.cfg.clients + (1 if self.secure == "he" else 0)
        nodes = self.t.nodes(expected=expected, wait=float(self.extras.get("node-wait", 120.0)))
        self.node_of = {i: n for i, n in enumerate(nodes)}  # provisional, for the hello stage
        hello = self._send("hello", {i: {} for i in range(len(nodes))}, required=True)
        mapping: dict[int, int] = {}
        for provisional, content in hello.items():
            c = -1 if content.get("role") == "keyholder" else int(content["client"])
            if c in mapping:
                raise UsageError(f"two SuperNodes claim client {c} (node config client-id)")
            mapping[c] = nodes[provisional]
        want = set(range(self.cfg.clients)) | ({-1} if self.secure == "he" else set())
        if set(mapping) != want:
            raise UsageError(f"SuperNodes: expected clients {sorted(want)}, got {sorted(mapping)}")
        self.node_of = mapping
        self.alive = set(range(self.cfg.clients))
        self.wire = Wire()  # the hello stage's provisional ids are not clients

    def run(self) -> dict:
        t0 = time.perf_counter()
        self.connect()
        try:
            self._run()
        except SecAggAbortError as exc:
            self._abandon()
            if not self.refused:
                raise
            why = "; ".join(f"client {r['client']} at {r['stage']}: {r['reason']}" for r in self.refused[:3])
            raise SecAggAbortError(f"{exc} (refused: {why}{'; ...' if len(self.refused) > 3 else ''})") from exc
        except BaseException:
            self._abandon()
            raise
        self._send("finish", {c: {} for c in sorted(self.alive) + ([-1] if self.secure == "he" else [])})
        return {"seconds": time.perf_counter() - t0, "stages": self.stage_log, "wire": self.wire.summary(),
                "clients_at_end": sorted(self.alive), "step_timing": self.step_timing, "refused": self.refused,
                "excluded": self.excluded}

    def _abandon(self) -> None:
        """An aborted run: ask every node, dropped ones too, to delete its state of this run (best effort)."""
        try:
            self.timeout = min(self.timeout, 30.0)
            self._send("finish", {c: {} for c in sorted(self.node_of)})
        except Exception as exc:  # noqa: BLE001 - the abort's own error is the one to report
            log.warn(f"abort: could not ask every node to delete its run state ({exc})")

    def _run(self) -> None:
        layers = decoder_layers(self.model)
        tasks = self.strategy.tasks(n_layers=len(layers))
        if self.secure != "none" and self.strategy.name == "fedspallm":  # every layer's sum covers enough clients
            from secprune.fedspallm.driver import check_subfederations

            check_subfederations(self.secure, self.strategy.plan, n_layers=len(layers),
                                 options={"threat": self._threat(), "threshold": self.cfg.secagg_threshold,
                                          "neighbours": self.cfg.secagg_neighbours or None})
        if hasattr(self.strategy, "comm"):
            self.strategy.comm.model_entries = sum(lin.weight.numel() for layer in layers
                                                   for lin in prunable_linears(layer).values())
        self.he_context = self._he_setup() if self.secure == "he" else None
        broadcast: dict[str, torch.Tensor] = {}
        for batch in batches(self.strategy, tasks):
            sums, uploads, voters = self._step(batch, broadcast)
            for task in batch:
                layer = {n: lin.weight for n, lin in prunable_linears(layers[task.layer]).items()}
                received = self.strategy.received(task) or {}
                layer = {n: received.get(n, w) for n, w in layer.items()}
                prefix = f"layers.{task.layer}."
                task_sums = {n: {kind: sums[kind][prefix + n].reshape(w.shape) for kind in sums}
                             for n, w in layer.items()}
                counted = replace(task, clients=[i for i in task.clients if i in voters])
                self.strategy.server_step(counted, task_sums, layer=layer,
                                          uploads={i: u for i, u in uploads.get(task.step, {}).items()})
            broadcast = self.strategy.broadcast(batch[-1])

    # --- one step message and its secure sums
    def _layout(self, batch: list[Task]) -> dict[str, int]:
        layers = decoder_layers(self.model)
        return {f"layers.{t.layer}.{n}": lin.weight.numel() for t in batch
                for n, lin in prunable_linears(layers[t.layer]).items()}

    def _step(self, batch: list[Task], broadcast: dict[str, torch.Tensor]):
        kinds = self.strategy.kinds(batch[0])
        layout = self._layout(batch)
        contents: dict[int, dict] = {}
        common = {"tasks": json.dumps([task_spec(t) for t in batch])}
        common |= {f"broadcast/{k}": v.cpu().numpy() for k, v in broadcast.items()}
        extra = self._secure_before_step(batch, kinds, layout)
        for c in sorted(self.alive):
            content = dict(common)
            for task in batch:
                if c in task.clients:
                    got = self.strategy.received(task) or {}
                    content |= {f"received/layers.{task.layer}.{n}": w.cpu().numpy() for n, w in got.items()}
            contents[c] = content | extra.get(c, {})
        replies = self._send_waves("step", contents)
        uploads: dict[int, dict[int, dict[str, int]]] = defaultdict(dict)
        self.step_timing.append({c: _timing(r.get("timing", "{}")) for c, r in replies.items()})
        for c, content in replies.items():
            for step, sizes in json.loads(content.get("uploads", "{}")).items():
                uploads[int(step)][c] = sizes
        sums, voters = self._secure_after_step(batch, kinds, layout, replies)
        return sums, uploads, voters

    def _send_waves(self, stage: str, contents: dict[int, dict]) -> dict[int, dict]:
        wave = int(self.extras.get("parallel", 0)) or len(contents)
        replies: dict[int, dict] = {}
        clients = sorted(contents)
        for s in range(0, len(clients), wave):
            replies |= self._send(stage, {c: contents[c] for c in clients[s:s + wave]})
        return replies

    # --- secure aggregation around a step
    def _scope(self, batch: list[Task]) -> str:
        return "model" if self.strategy.name == "fedprllm" else f"round{batch[0].round}"

    def _secure_before_step(self, batch, kinds: list[Kind], layout: dict[str, int]) -> dict[int, dict]:
        out: dict[int, dict] = defaultdict(dict)
        if self.secure == "none":
            for c in self.alive:
                out[c] |= {f"{k.name}/names": json.dumps(list(layout)) for k in kinds}
            return out
        if self.secure == "he":
            from secprune.secagg.messages import SERVER, MsgType, decode, encode

            _, payload = decode(self.he_context, expect=MsgType.HE_CONTEXT, round_id=0, receiver=SERVER)
            cfgs = {k.name: json.dumps(self._he_cfgs(k, layout, batch)) for k in kinds}  # one round per matrix
            for c in self.alive:  # the key holder's signed context, forwarded to each client
                out[c]["he/context"] = encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=c,
                                              payload=payload)
                out[c] |= {f"{k}/he": v for k, v in cfgs.items()}
            return out
        scope = self._scope(batch)
        if scope not in self.sessions:
            self.sessions = {scope: self._pairwise_setup(scope, kinds, batch, layout)}
        session = self.sessions[scope]
        session["epoch"] += 1
        for k in kinds:
            confirms = session["confirms"].pop(k.name, {})
            for c in self.alive:
                out[c][f"{k.name}/epoch"] = session["epoch"]
                if c in confirms:
                    out[c][f"{k.name}/confirm"] = confirms[c]
        return out

    def _secure_after_step(self, batch, kinds: list[Kind], layout: dict[str, int], replies: dict[int, dict]):
        voters = set(replies)
        if self.secure == "none":
            sums = {}
            for k in kinds:
                sums[k.name] = {name: sum(unpack_vector(replies[c][f"{k.name}/plain/{name}"], length=n,
                                                        max_value=k.max_value) if not k.is_float else
                                          replies[c][f"{k.name}/plain/{name}"].astype(np.float64)
                                          for c in sorted(replies)) for name, n in layout.items()}
                sums[k.name] = {name: torch.as_tensor(v) for name, v in sums[k.name].items()}
            return sums, voters
        if self.secure == "he":
            return self._he_sums(kinds, layout, replies)
        session = self.sessions[self._scope(batch)]
        servers = session["servers"]
        for c, content in replies.items():
            for k in kinds:
                for chunk in content.get(f"{k.name}/masked", []):
                    if not self._feed(c, "step", servers[k.name].receive_masked, chunk):
                        break
        requests = {k: s.close_upload() for k, s in servers.items()}
        voters = set.intersection(*(set(s.uploaded) for s in servers.values()))
        got = self._send("consistency", self._per_client(requests))
        self._feed_all(got, servers, "receive_survivors_signature", "consistency")
        requests = {k: s.close_consistency() for k, s in servers.items()}
        got = self._send("unmask", self._per_client(requests))
        self._feed_all(got, servers, "receive_unmask_response", "unmask")
        sums = {k: {name: torch.as_tensor(v) for name, v in s.finish().items()} for k, s in servers.items()}
        for s in servers.values():
            s.prg.release()
        return sums, voters

    def _per_client(self, requests: dict[str, dict[int, bytes]]) -> dict[int, dict]:
        out: dict[int, dict] = defaultdict(dict)
        for kind, by_client in requests.items():
            for c, msg in by_client.items():
                if c in self.alive:
                    out[c][f"{kind}/msg"] = msg
        return out

    def _reject(self, rejected: dict[int, str], servers: dict) -> None:
        """Clients whose input failed validation in any matrix: dropped from the run and withdrawn from every
        sum of the step (all sums cover the same clients)."""
        for c, why in sorted(rejected.items()):
            log.warn(f"stage he_verify: client {c} rejected: {why}")
            self.alive.discard(c)
            self.refused.append({"stage": "he_verify", "client": c, "reason": why})
            for server in servers.values():
                server.withdraw(c)

    # --- feeding the protocol: a client whose message is refused is dropped, not obeyed
    def _feed(self, client: int, stage: str, receive, message) -> bool:
        """``receive(message)``; a refused message (ProtocolError) drops its sender, with the reason."""
        try:
            receive(message)
        except ProtocolError as exc:
            log.warn(f"stage {stage}: client {client} dropped: {exc}")
            self.alive.discard(client)
            self.refused.append({"stage": stage, "client": client, "reason": str(exc)})
            return False
        return True

    def _feed_all(self, got: dict[int, dict], servers: dict, method: str, stage: str) -> None:
        for c, content in got.items():
            for k, srv in servers.items():
                if f"{k}/msg" in content and not self._feed(c, stage, getattr(srv, method), content[f"{k}/msg"]):
                    break

    def _exclude(self, servers: dict) -> None:
        for srv in servers.values():
            for c, why in srv.exclusions().items():
                if c in self.alive or c not in self.excluded:
                    log.warn(f"client {c} excluded from secure aggregation: {why}")
                self.excluded[c] = why
                self.alive.discard(c)

    # --- pairwise setup (once per session)
    def _pairwise_setup(self, scope: str, kinds: list[Kind], batch: list[Task], layout: dict[str, int]) -> dict:
        from secprune.secagg.pairwise_server import PairwiseServer
        from secprune.secagg.params import pairwise_parameters
        from secprune.secagg.ring import ring_bits

        directory = self._directory()
        threat = self._threat()
        degree, threshold = pairwise_parameters(n_clients=self.cfg.clients, threat=threat,
                                                neighbours=self.cfg.secagg_neighbours or None,
                                                threshold=self.cfg.secagg_threshold)
        epochs = self._epochs(scope, batch, layout)
        servers = {k.name: PairwiseServer(directory=directory, bits=ring_bits(n_clients=self.cfg.clients,
                                                                              max_value=k.max_value),
                                          max_value=k.max_value, threshold=threshold, degree=degree,
                                          min_contributors=threat.min_contributors, epochs=epochs, threat=threat,
                                          excluded=[c for c in range(self.cfg.clients) if c not in self.alive])
                   for k in kinds}
        got = self._send("advertise", self._per_client({k: s.session_messages() for k, s in servers.items()}))
        self._feed_all(got, servers, "receive_advertisement", "advertise")
        if degree is not None:  # the graph: every member's committed nonce, revealed
            got = self._send("reveal", self._per_client({k: s.commits() for k, s in servers.items()}))
            self._feed_all(got, servers, "receive_reveal", "reveal")
        got = self._send("share", self._per_client({k: s.rosters() for k, s in servers.items()}))
        self._feed_all(got, servers, "receive_share_bundle", "share")
        routed = {k: s.close_shares() for k, s in servers.items()}
        contents: dict[int, dict] = defaultdict(dict)
        for k, by_client in routed.items():
            for c, blobs in by_client.items():
                if c in self.alive:
                    contents[c][f"{k}/shares"] = blobs
        got = self._send("ack", contents)
        self._feed_all(got, servers, "receive_ack", "ack")
        confirms = {k: s.close_acks() for k, s in servers.items()}
        opening = {k: s for k, s in servers.items() if s._stage == "open"}
        if opening:  # complaints: each accused dealer opens the SHARE messages in question
            got = self._send("open", self._per_client({k: confirms[k] for k in opening}))
            self._feed_all(got, opening, "receive_open", "open")
            confirms |= {k: s.close_open() for k, s in opening.items()}
        self._exclude(servers)
        return {"servers": servers, "epoch": -1, "confirms": confirms}

    def _epochs(self, scope: str, batch: list[Task], layout: dict[str, int]) -> list[tuple[tuple[str, int], ...]]:
        """Epoch layouts of a session: FedPrLLM one per step message of the run, FedSpaLLM the round's one."""
        if scope != "model":
            return [tuple(layout.items())]
        tasks = self.strategy.tasks(n_layers=len(decoder_layers(self.model)))
        return [tuple(self._layout(b).items()) for b in batches(self.strategy, tasks)]

    def _directory(self):
        """The pinned key directory, checked against the authority's signature when one is configured."""
        from secprune.secagg.identity import KeyDirectory, read_authority

        directory = KeyDirectory.load(self._directory_path(), authority=read_authority(self.extras.get("authority")))
        if directory.n_clients != self.cfg.clients:
            raise UsageError(f"directory: pins {directory.n_clients} clients, the run has {self.cfg.clients}")
        return directory

    def _threat(self):
        from secprune.secagg.params import threat

        return threat(self.cfg.clients, colluders=self.cfg.secagg_colluders, dropouts=self.cfg.secagg_dropouts,
                      min_contributors=self.cfg.secagg_min_contributors)

    def _directory_path(self) -> Path:
        path = str(self.extras.get("directory") or "")
        if not path:
            raise UsageError(f"--secure-agg {self.secure}: the server needs the pinned key directory "
                             "(run config directory = '<keys>/directory.json', made by `secprune keys`)")
        return Path(path)

    # --- HE: the key holder is a SuperNode of its own (--node-config "role='keyholder'")
    def _he_setup(self) -> bytes:
        got = self._send("he_context", {-1: {}}, required=True)[-1]
        self._he_params = {"plain_modulus": int(got["plain_modulus"]),
                           "poly_modulus_degree": int(got["poly_modulus_degree"])}
        self._he_rounds: dict[tuple[str, str], tuple] = {}
        return got["context"]

    def _he_cfgs(self, kind: Kind, layout: dict[str, int], batch: list[Task]) -> dict[str, dict]:
        """Fresh public parameters (round id, server key) for every matrix of the step, with the rule each
        client's input is checked against (0/1 inputs, ``--secagg-validate``)."""
        import os

        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from secprune.secagg.crypto import public_bytes
        from secprune.secagg.he import HEConfig
        from secprune.secagg.he_validation import Rule

        validate = self.cfg.secagg_validate and kind.max_value == 1
        layers = decoder_layers(self.model)
        shapes = {f"layers.{t.layer}.{n}": (t, tuple(lin.weight.shape)) for t in batch
                  for n, lin in prunable_linears(layers[t.layer]).items()}
        out = {}
        for name, n in layout.items():
            sk = X25519PrivateKey.generate()
            task, shape = shapes[name]
            rule = self.strategy.input_rule(task, kind, shape) if validate else None
            cfg = HEConfig(round_id=int.from_bytes(os.urandom(8), "big"), n_clients=self.cfg.clients, length=n,
                           max_value=kind.max_value, server_key=public_bytes(sk), validate=validate,
                           rule=Rule.decode(rule), **self._he_params)
            self._he_rounds[(kind.name, name)] = (cfg, sk)
            values = cfg.encode()
            out[name] = values | {"server_key": values["server_key"].hex()}
        return out

    def _he_sums(self, kinds: list[Kind], layout: dict[str, int], replies: dict[int, dict]):
        """The sums of every matrix and kind over the clients whose uploads all passed the server's checks (a
        client with one refused upload is dropped from every sum, so all sums cover the same clients)."""
        from secprune.secagg.he import HEServer

        directory = self._directory()
        servers = {}
        for k in kinds:
            for name in layout:
                cfg, sk = self._he_rounds.pop((k.name, name))
                servers[(k.name, name)] = HEServer(cfg, self.he_context, directory=directory, server_key=sk,
                                                   min_contributors=self._threat().min_contributors)
        forwards: dict[tuple[str, str], dict[int, bytes]] = defaultdict(dict)
        for c in sorted(replies):
            mine: dict[tuple[str, str], bytes] = {}
            for key, server in servers.items():
                def receive(message, key=key, server=server, mine=mine):
                    mine[key] = server.receive(message)
                if not self._feed(c, "step", receive, replies[c].get(f"{key[0]}/he/{key[1]}", b"")):
                    for done in mine:
                        servers[done].withdraw(c)
                    break
            else:
                for key, fwd in mine.items():
                    forwards[key][c] = fwd
        cfgs = {}
        for (kind, name), server in servers.items():
            values = server.cfg.encode()
            cfgs[(kind, name)] = json.dumps(values | {"server_key": values["server_key"].hex()})
        checked = {key: s for key, s in servers.items() if s.cfg.validate}
        decisions: dict[tuple[str, str], list[bytes]] = {}
        if checked:  # the key holder's draw and share of every client's checks, then the server's share
            request = {}
            for (kind, name) in checked:
                request[f"{kind}/{name}/cfg"] = cfgs[(kind, name)]
                request[f"{kind}/{name}/uploads"] = [forwards[(kind, name)][c] for c in sorted(forwards[(kind, name)])]
            got = self._send("he_verify", {-1: request}, required=True)[-1]
            for (kind, name), server in checked.items():
                decisions[(kind, name)] = [server.verify(m) for m in got.get(f"{kind}/{name}/verify", [])]
            self._reject({c: f"{name}: {why}" for (_, name), s in checked.items() for c, why in s.rejected.items()},
                         servers)
        request = {}
        for (kind, name), server in servers.items():
            request[f"{kind}/{name}/cfg"] = cfgs[(kind, name)]
            if server.cfg.validate:
                request[f"{kind}/{name}/decisions"] = decisions[(kind, name)]
            else:
                request[f"{kind}/{name}/uploads"] = [forwards[(kind, name)][c]
                                                     for c in sorted(forwards[(kind, name)])]
            request[f"{kind}/{name}/decrypt"] = server.decrypt_request()
        got = self._send("he_decrypt", {-1: request}, required=True)[-1]
        sums: dict[str, dict] = {k.name: {} for k in kinds}
        for (kind, name), server in servers.items():
            sums[kind][name] = torch.as_tensor(server.result(got[f"{kind}/{name}/result"]))
        voters = set(next(iter(servers.values())).uploaded) if servers else set()
        return sums, voters


TIMING_KEYS = ("model_load_s", "prune_s", "upload_s")


def _timing(text: str) -> dict[str, float]:
    """A client's self-reported step timing as the server logs it: the known fields as numbers, nothing else
    (whatever else a client sends never reaches log.json)."""
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out = {}
    for k in TIMING_KEYS:
        try:
            out[k] = float(raw[k])
        except (KeyError, TypeError, ValueError):
            pass
    return out
