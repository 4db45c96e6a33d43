"""Full secure-aggregation rounds side by side: ours (pairwise, HE) against Flower's SecAgg+ (real workflow + mod).

For every n (clients) and L (entries per client vector) the script runs, in one process and one run:

* **pairwise (ours):** one complete session of :class:`secprune.secagg.pairwise.PairwiseSum` (all n clients and
  the server, active-adversary version: signatures, the graph draw, consistency check, commitments, MACs, the
  ledger's digest of every input), with the degree k and threshold t derived from the threat (``--colluders``,
  default 1/3 of the clients, ``--dropout-budget``, default 1/10; ``--neighbours`` forces a degree), with
  ``--drop`` clients dropping after key sharing.  Wall time of ``summer.sum``; "client s" is the time spent
  inside the clients' state machines (every stage, all clients); bytes are the lengths of the exact messages.
* **flower:** Flower's own ``SecAggPlusWorkflow`` (server) against ``secaggplus_mod`` (every client), wired by
  an in-process ``Grid`` that serializes each ``Message`` to protobuf (``message_to_proto``) and parses it on
  the other side, so bytes are what Flower would put on the wire.  Same n, L, number of shares (k + 1),
  threshold t and dropouts (the same number of clients do not answer the masked-vector stage).  The global
  model the workflow broadcasts is 1 entry, so the bytes are the protocol's own; the clients return the 0/1
  vector as float32 parameters with ``max_weight=1`` (exact with Flower's default quantization).
  Wall time of the workflow call; "client s" is the time spent inside the clients' mod (incl. parsing).
* **plaintext:** bit-packed 0/1 uploads added by the server (the cost floor).
* **he (ours, optional ``--he``):** a full round of :class:`secprune.secagg.he.HESum` (n clients, server, key
  holder), the same dropouts, without ("he") and with ("he+check") the clients' proofs that their inputs are 0/1
  vectors bound to their ciphertexts (:mod:`secprune.secagg.he_validation`).

Bits per entry are per client that uploaded: "client up" counts every byte the clients sent, "wire" every byte
of the round in both directions (all parties), each divided by (uploading clients x L).

Flower is optional (``pip install "flwr==1.41.0"``, in the ``flower`` extra); without it the Flower rows are
skipped with a message.  Usage: ``python experiments/bench_secagg.py`` (n in 8 16 64, L in 1e6 1e7) or e.g.
``python experiments/bench_secagg.py --clients 8 --lengths 1e5 --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secprune.secagg import make_summer  # noqa: E402
from secprune.secagg.pairwise import PairwiseSum  # noqa: E402
from secprune.secagg.pairwise_client import PairwiseClient  # noqa: E402
from secprune.secagg.params import pairwise_parameters, threat  # noqa: E402
from secprune.secagg.ring import pack, unpack  # noqa: E402


def _now() -> float:
    return time.perf_counter()


def bench_plain(vectors: list[np.ndarray]) -> dict:
    length = vectors[0].size
    t0 = _now()
    msgs = [pack(v, 1) for v in vectors]
    acc = np.zeros(length, np.int64)
    for m in msgs:
        acc += unpack(m, 1, length)
    wall = _now() - t0
    assert np.array_equal(acc, np.sum(vectors, axis=0, dtype=np.int64))
    return {"round_s": wall, "client_bits_per_entry": 8 * len(msgs[0]) / length,
            "wire_bits_per_entry": 8 * len(msgs[0]) / length}


class _TimedClient(PairwiseClient):
    """A client whose every stage adds its time to ``CLIENT_S`` (upload: the whole generator)."""


CLIENT_S = [0.0]


def _timed(method):
    def run(self, *args, **kwargs):
        t0 = _now()
        try:
            out = method(self, *args, **kwargs)
        finally:
            CLIENT_S[0] += _now() - t0
        if method.__name__ != "upload":
            return out

        def stream():
            while True:
                t1 = _now()
                try:
                    msg = next(out)
                except StopIteration:
                    CLIENT_S[0] += _now() - t1
                    return
                CLIENT_S[0] += _now() - t1
                yield msg
        return stream()
    return run


for _name in ("join", "reveal", "share_keys", "receive_share", "acknowledge", "open_shares", "confirm", "upload",
              "sign_survivors", "unmask"):
    setattr(_TimedClient, _name, _timed(getattr(PairwiseClient, _name)))


def bench_pairwise(vectors: list[np.ndarray], *, neighbours: int | None, threshold: int, drop: list[int],
                   rule) -> dict:
    n, length = len(vectors), vectors[0].size
    summer = PairwiseSum(n_clients=n, neighbours=neighbours, threshold=threshold, threat=rule,
                         dropouts={"upload": drop} if drop else None, client_class=_TimedClient)
    CLIENT_S[0] = 0.0
    t0 = _now()
    out = summer.sum("layer", vectors)
    wall = _now() - t0
    alive = [i for i in range(n) if i not in drop]
    assert np.array_equal(out, np.sum([vectors[i] for i in alive], axis=0, dtype=np.int64)), "pairwise not exact"
    stats = summer.stats()
    client = sum(v for k, v in stats["sent"].items() if k.startswith("client"))
    return {"round_s": wall, "client_s": CLIENT_S[0], "client_bits_per_entry": 8 * client / (len(alive) * length),
            "wire_bits_per_entry": 8 * stats["total_bytes"] / (len(alive) * length), "bits": summer.bits,
            "degree": summer.degree or n - 1, "threshold": summer.threshold}


HE_S: dict[str, float] = {}


def _he_timed(party: str, method):
    def run(self, *args, **kwargs):
        t0 = _now()
        try:
            return method(self, *args, **kwargs)
        finally:
            HE_S[party] = HE_S.get(party, 0.0) + _now() - t0
    return run


def _time_he_parties() -> None:
    """Time every client, server and key-holder method of the he backend (once per process)."""
    from secprune.secagg import he

    if getattr(he.HEClient.encrypt, "_timed", False):
        return
    for cls, party, names in ((he.HEClient, "client", ("encrypt",)),
                              (he.HEServer, "server", ("receive", "verify", "decrypt_request", "result")),
                              (he.KeyHolder, "keyholder", ("receive_upload", "receive_decision", "decrypt"))):
        for name in names:
            timed = _he_timed(party, getattr(cls, name))
            timed._timed = True
            setattr(cls, name, timed)


def bench_he(vectors: list[np.ndarray], *, drop: list[int], validate: bool) -> dict:
    n, length = len(vectors), vectors[0].size
    _time_he_parties()
    summer = make_summer("he", n_clients=n, dropouts={"upload": drop} if drop else None, validate=validate)
    summer.sum("warm-up", [np.zeros(1, np.uint8)] * n)  # the key holder's context goes out once per summer
    HE_S.clear()
    t0 = _now()
    out = summer.sum("layer", vectors)
    wall = _now() - t0
    alive = [i for i in range(n) if i not in drop]
    assert np.array_equal(out, np.sum([vectors[i] for i in alive], axis=0, dtype=np.int64)), "he not exact"
    per = summer.stats()["per_round"]["layer"]["sent"]
    client = sum(v for k, v in per.items() if k.startswith("client"))
    return {"round_s": wall, "client_s": HE_S.get("client", 0.0), "server_s": HE_S.get("server", 0.0),
            "keyholder_s": HE_S.get("keyholder", 0.0), "client_bits_per_entry": 8 * client / (len(alive) * length),
            "wire_bits_per_entry": 8 * sum(per.values()) / (len(alive) * length)}


def bench_flower(vectors: list[np.ndarray], *, num_shares: int, threshold: int, drop: list[int]) -> dict | None:
    """Flower's SecAggPlusWorkflow against secaggplus_mod, every message serialized to protobuf and back."""
    try:
        import flwr
        import flwr.compat.common.recorddict_compat as compat
        from flwr.app import ConfigRecord, Context, Message, RecordDict
        from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.common.serde import message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage
        from flwr.server.client_manager import SimpleClientManager
        from flwr.server.client_proxy import ClientProxy
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.strategy import FedAvg
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey
        from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
        from flwr.serverapp.grid import Grid
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        return None
    logging.getLogger("flwr").setLevel(logging.ERROR)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    n, length = len(vectors), vectors[0].size

    class Proxy(ClientProxy):
        def __init__(self, node_id: int) -> None:
            super().__init__(str(node_id))
            self.node_id = node_id

        def get_properties(self, *a, **k):
            raise NotImplementedError

        get_parameters = fit = evaluate = reconnect = get_properties

    class LocalGrid(Grid):
        """Delivers each message to the node's app in-process; replies from dropped nodes never arrive."""

        def __init__(self, apps: dict, dropped: dict[int, set[int]]) -> None:
            self.apps, self.dropped, self.stage = apps, dropped, 0
            self.down = self.up = 0
            self.client_s = 0.0

        def set_run(self, run) -> None:
            pass

        @property
        def run(self):
            return None

        def create_message(self, *a, **k):
            raise NotImplementedError

        def get_node_ids(self):
            return list(self.apps)

        def push_messages(self, messages):
            raise NotImplementedError

        pull_messages = push_messages

        def send_and_receive(self, messages, *, timeout=None):
            out = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                msg.metadata.__dict__["_src_node_id"] = 1
                data = message_to_proto(msg).SerializeToString()
                self.down += len(data)
                node = msg.metadata.dst_node_id
                if node in self.dropped.get(self.stage, set()):
                    continue
                t0 = _now()
                reply = self.apps[node](message_from_proto(ProtoMessage.FromString(data)))
                reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                raw = message_to_proto(reply).SerializeToString()
                self.client_s += _now() - t0
                self.up += len(raw)
                out.append(message_from_proto(ProtoMessage.FromString(raw)))
                del raw, reply
            self.stage += 1
            return out

    def make_app(node_id: int, vector: np.ndarray):
        ctx = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})

        def fit(msg, _ctx):  # the 0/1 vector as float32 parameters (converted only when asked)
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector.astype(np.float32)]), 1, {})
            return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

        return lambda msg: secaggplus_mod(msg, ctx, fit)

    node_ids = list(range(2, n + 2))
    apps = {nid: make_app(nid, vectors[i]) for i, nid in enumerate(node_ids)}
    grid = LocalGrid(apps, {2: {node_ids[i] for i in drop}})  # stage 2 = collect masked vectors
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(Proxy(nid))
    base = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    ctx = LegacyContext(base, strategy=FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n),
                        client_manager=manager)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(1, np.float32)]), True)  # a 1-entry global model: protocol bytes only
    workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold, max_weight=1.0)
    t0 = _now()
    workflow(grid, ctx)
    wall = _now() - t0
    params = compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    mean = parameters_to_ndarrays(params)[0]
    alive = [i for i in range(n) if i not in drop]
    exact = np.sum([vectors[i] for i in alive], axis=0, dtype=np.int64)
    assert mean.size == length and np.array_equal(np.rint(mean * len(alive)), exact), "flower sum is not exact"
    return {"round_s": wall, "client_s": grid.client_s, "client_bits_per_entry": 8 * grid.up / (len(alive) * length),
            "wire_bits_per_entry": 8 * (grid.up + grid.down) / (len(alive) * length), "version": flwr.__version__}


def _best(repeats: int, bench, *args, **kwargs) -> dict | None:
    """The fastest of ``repeats`` rounds (by client time where measured, else round time)."""
    rounds = [bench(*args, **kwargs) for _ in range(repeats)]
    return None if rounds[0] is None else min(rounds, key=lambda r: r.get("client_s", r["round_s"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 16, 64])
    ap.add_argument("--lengths", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--colluders", default="1/3", help="the threat: colluding clients, a count or fraction")
    ap.add_argument("--dropout-budget", default="1/10", help="the threat: dropouts, a count or fraction")
    ap.add_argument("--neighbours", type=int, default=0,
                    help="force this SecAgg+ degree (0: derived from the threat; complete graph if >= n-1)")
    ap.add_argument("--drop", type=int, default=1, help="clients that drop after key sharing (both protocols)")
    ap.add_argument("--he", action="store_true", help="also run our HE backend (all n clients; slow)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds per backend and size; the fastest is kept (client s, else round s): shared "
                         "machines add noise, never speed")
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args(argv)
    if any(n < 3 for n in args.clients) or any(length < 1 for length in args.lengths) or args.repeats < 1:
        raise ValueError("--clients: expected integers >= 3; --lengths: expected numbers >= 1; --repeats: >= 1")
    rng = np.random.default_rng(0)
    rows = []
    flower_missing = False
    for n in args.clients:
        rule = threat(n, colluders=args.colluders, dropouts=args.dropout_budget)
        degree, t = pairwise_parameters(n_clients=n, threat=rule, neighbours=min(args.neighbours, n - 1) or None)
        h = n if degree is None else degree + 1
        drop = list(range(n - args.drop, n))
        for length in (int(x) for x in args.lengths):
            vectors = [(rng.random(length) < 0.5).astype(np.uint8) for _ in range(n)]
            reps = args.repeats
            res = {"plaintext": _best(reps, bench_plain, vectors),
                   "pairwise": _best(reps, bench_pairwise, vectors, neighbours=degree or n - 1, threshold=t,
                                     drop=drop, rule=rule)}
            if args.he:
                res["he"] = _best(reps, bench_he, vectors, drop=drop, validate=False)
                res["he+check"] = _best(reps, bench_he, vectors, drop=drop, validate=True)
            if not args.skip_flower:
                flower = _best(reps, bench_flower, vectors, num_shares=h, threshold=t, drop=drop)
                if flower is None:
                    flower_missing = True
                else:
                    res["flower"] = flower
            for name, r in res.items():
                r.update(n=n, length=length, backend=name, holders=h, t=t, dropped=len(drop),
                         peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
                rows.append(r)
            del vectors
            _print_block(n, length, h, t, drop, res)
    if flower_missing:
        print("\nflower: flwr is not importable here; Flower rows skipped (pip install 'flwr==1.41.0')")
    if args.json:
        meta = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


def _print_block(n: int, length: int, h: int, t: int, drop: list[int], res: dict) -> None:
    pw = res["pairwise"]
    print(f"\n## n={n} clients, L={length:.0e}, {h} share holders per client, t={t}, {len(drop)} dropped "
          f"before upload (ours: b={pw['bits']} bits)")
    print(f"{'backend':10s} {'round s':>9s} {'client s':>9s} {'client up b/entry':>17s} {'wire b/entry':>12s} "
          f"{'time / ours':>11s} {'client s / ours':>15s} {'upload / ours':>13s}")
    for name, r in res.items():
        client = r.get("client_s")
        ratio = f"{client / pw['client_s']:15.2f}" if client is not None else f"{'-':>15s}"
        print(f"{name:10s} {r['round_s']:9.3f} {client if client is not None else float('nan'):9.3f} "
              f"{r['client_bits_per_entry']:17.2f} {r['wire_bits_per_entry']:12.2f} "
              f"{r['round_s'] / pw['round_s']:11.2f} {ratio} "
              f"{r['client_bits_per_entry'] / pw['client_bits_per_entry']:13.2f}")
    for name in ("he", "he+check"):
        if name in res:
            r = res[name]
            print(f"{name}: server {r['server_s']:.3f} s, key holder {r['keyholder_s']:.3f} s (all clients: "
                  f"{r['client_s']:.3f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
