"""Benchmark of secure mask summation: plaintext vs pairwise masking (SecAgg/SecAgg+) vs BFV, and Flower.

For every n (clients) and L (entries per client vector) it runs one protocol round and reports per-client
masking/encryption time, server time and bits per entry on the wire, plus ratios measured in the same run
and an extrapolation to a LLaMA-7B-sized mask (6.5e9 entries per client).

What is measured and what is extrapolated:
* plaintext, pairwise: every client is simulated; client time is the mean over all clients of the
  masked-input step (PRG expansion of the self mask and k pairwise masks, mod 2^b, b-bit packing), server
  time is adding all uploads plus unmasking.
* he (ours, packed BFV) and tenseal-default (N=8192, t=1032193, one entry per slot, no packing): at most
  ``--he-clients`` clients encrypt for real (default 2; mean per client); the server's time is measured on
  those uploads and scaled linearly to n (ciphertext additions), decryption is measured.
* flower: Flower's own SecAgg+ masking primitives (flwr.common.secure_aggregation: ``pseudo_rand_gen`` for
  the self mask and k pairwise masks, ``parameters_mod``, ``ndarray_to_bytes``) on one client; its server
  unmasking (regenerating n self masks) is measured on ``--he-clients`` clients and scaled to n.
  Flower's full gRPC workflow is not run.
* The 7B row multiplies the per-entry costs by 6.5e9 (linear in L; measured, not run).

Usage: ``python experiments/bench_secagg.py`` (full grid: n in 8 16 64, L in 1e6 1e7) or e.g.
``python experiments/bench_secagg.py --clients 8 --lengths 100000 --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secprune.secagg.graph import neighbour_graph  # noqa: E402
from secprune.secagg.messages import SERVER  # noqa: E402
from secprune.secagg.pairwise import (  # noqa: E402
    PairwiseClient,
    PairwiseServer,
    RoundConfig,
    default_threshold,
)
from secprune.secagg.prg import MaskPRG  # noqa: E402
from secprune.secagg.ring import pack, ring_bits, unpack  # noqa: E402

LLAMA7B = 6.5e9


def _now() -> float:
    return time.perf_counter()


def bench_plain(vectors: list[np.ndarray]) -> dict:
    n, length = len(vectors), vectors[0].size
    t0 = _now()
    msgs = [pack(v, 1) for v in vectors]
    t_client = (_now() - t0) / n
    t0 = _now()
    acc = np.zeros(length, np.int64)
    for m in msgs:
        acc += unpack(m, 1, length)
    t_server = _now() - t0
    assert np.array_equal(acc, np.sum(vectors, axis=0, dtype=np.int64))
    return {"client_s": t_client, "server_s": t_server, "upload_bits_per_entry": 8 * len(msgs[0]) / length,
            "client_sent_bits_per_entry": 8 * len(msgs[0]) / length}


def bench_pairwise(vectors: list[np.ndarray], *, neighbours: int | None, cipher: str) -> dict:
    """One SecAgg(+) round driven step by step, timing the masked-input step of every client."""
    n, length = len(vectors), vectors[0].size
    graph = neighbour_graph(n, degree=neighbours, seed=1)
    holders = 1 + min(len(a) for a in graph)
    cfg = RoundConfig(round_id=int.from_bytes(os.urandom(8), "big"), n_clients=n, length=length,
                      bits=ring_bits(n_clients=n, max_value=1), max_value=1,
                      threshold=default_threshold(holders), cipher=cipher)
    prg = MaskPRG(cipher=cipher)
    clients = [PairwiseClient(i, cfg, prg=prg) for i in range(n)]
    server = PairwiseServer(cfg, graph, prg=prg)
    sent = dict.fromkeys(range(n), 0)
    t0 = _now()
    for c in clients:
        msg = c.advertise()
        sent[c.id] += len(msg)
        server.receive_advertisement(msg)
    rosters = server.rosters()
    for c in clients:
        msg = c.share_keys(rosters[c.id])
        sent[c.id] += len(msg)
        server.receive_share_bundle(msg)
    for i, blobs in server.close_shares().items():
        for blob in blobs:
            clients[i].receive_share(blob)
    t_setup = (_now() - t0) / n
    t_client = t_server = 0.0
    upload = 0
    for c in clients:
        t0 = _now()
        msg = c.masked_input(vectors[c.id])
        t_client += _now() - t0
        upload = len(msg)
        sent[c.id] += len(msg)
        t0 = _now()
        server.receive_masked(msg)
        t_server += _now() - t0
        del msg
    requests = server.close_masked()
    responses = []
    for c in clients:
        responses.append(c.unmask(requests[c.id]))
        sent[c.id] += len(responses[-1])
    t0 = _now()
    for r in responses:
        server.receive_unmask_response(r)
    out = server.finish()
    t_server += _now() - t0
    assert np.array_equal(out, np.sum(vectors, axis=0, dtype=np.int64)), "pairwise sum is not exact"
    return {"client_s": t_client / n, "server_s": t_server, "setup_client_s": t_setup, "bits": cfg.bits,
            "degree": len(graph[0]), "upload_bits_per_entry": 8 * upload / length,
            "client_sent_bits_per_entry": 8 * max(sent.values()) / length}


def bench_he(vectors: list[np.ndarray], *, sample: int, default_params: bool) -> dict:
    """Packed BFV (ours) or TenSEAL's textbook defaults (N=8192, t=1032193, one entry per slot)."""
    import tenseal as ts

    from secprune.secagg.he import HEClient, HEConfig, HEServer, KeyHolder
    from secprune.secagg.messages import MsgType, decode, encode

    n, length = len(vectors), vectors[0].size
    sample = min(sample, n)
    if default_params:
        ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
        t_enc = 0.0
        size = 0
        cts = []
        for i in range(sample):
            t0 = _now()
            enc = [ts.bfv_vector(ctx, vectors[i][j:j + 8192].astype(np.int64).tolist()).serialize()
                   for j in range(0, length, 8192)]
            t_enc += _now() - t0
            size = sum(len(c) for c in enc)
            cts.append(enc)
        t0 = _now()
        acc = [ts.bfv_vector_from(ctx, c) for c in cts[0]]
        for enc in cts[1:]:
            for a, c in zip(acc, enc, strict=True):
                a += ts.bfv_vector_from(ctx, c)
        t_add = (_now() - t0) / max(1, sample - 1) if sample > 1 else 0.0
        t0 = _now()
        total = np.concatenate([np.asarray(a.decrypt(), np.int64) for a in acc])
        t_dec = _now() - t0
        assert np.array_equal(total, np.sum(vectors[:sample], axis=0, dtype=np.int64))
        return {"client_s": t_enc / sample, "server_s": t_add * n + t_dec, "upload_bits_per_entry":
                8 * size / length, "client_sent_bits_per_entry": 8 * size / length,
                "simulated_clients": sample}
    holder = KeyHolder()
    ctx_msg = holder.public_context()
    _, pub = decode(ctx_msg, expect=MsgType.HE_CONTEXT, round_id=0, receiver=SERVER)
    cfg = HEConfig(round_id=7, n_clients=n, length=length, max_value=1, plain_modulus=holder.plain_modulus,
                   poly_modulus_degree=holder.poly_modulus_degree)
    server = HEServer(cfg, pub)
    t_enc = t_add = 0.0
    size = 0
    for i in range(sample):
        client = HEClient(i, encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=i, payload=pub))
        t0 = _now()
        msg = client.encrypt(cfg, vectors[i])
        t_enc += _now() - t0
        size = len(msg)
        t0 = _now()
        server.receive(msg)
        t_add += _now() - t0
    t0 = _now()
    result = server.result(holder.decrypt(cfg, server.aggregate()))
    t_dec = _now() - t0
    assert np.array_equal(result, np.sum(vectors[:sample], axis=0, dtype=np.int64)), "he sum is not exact"
    return {"client_s": t_enc / sample, "server_s": t_add / sample * n + t_dec, "upload_bits_per_entry":
            8 * size / length, "client_sent_bits_per_entry": 8 * size / length, "simulated_clients": sample,
            "entries_per_slot": cfg.packing[1], "context_bytes": len(ctx_msg)}


def bench_flower(vectors: list[np.ndarray], *, neighbours: int, sample: int) -> dict | None:
    """Flower's SecAgg+ client masking primitives (self mask + k pairwise masks over Z_(2^32))."""
    try:
        import flwr
        from flwr.common import ndarray_to_bytes
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    except ImportError:
        return None
    n, length = len(vectors), vectors[0].size
    mod_range = 1 << 32  # SecAggPlusWorkflow's default modulus_range
    k = min(neighbours, n - 1)
    t0 = _now()
    params = [vectors[0].astype(np.int64)]
    params = parameters_addition(params, pseudo_rand_gen(os.urandom(32), mod_range, [(length,)]))
    for j in range(k):
        mask = pseudo_rand_gen(os.urandom(32), mod_range, [(length,)])
        params = (parameters_addition if j % 2 else parameters_subtraction)(params, mask)
    params = parameters_mod(params, mod_range)
    wire = ndarray_to_bytes(params[0])
    t_client = _now() - t0
    sample = min(sample, n)
    t0 = _now()
    acc = [np.zeros(length, np.int64)]
    for _ in range(sample):  # add an upload and remove a regenerated self mask, as the server does
        acc = parameters_addition(acc, [np.frombuffer(wire[-8 * length:], np.int64)])
        acc = parameters_subtraction(acc, pseudo_rand_gen(os.urandom(32), mod_range, [(length,)]))
    acc = parameters_mod(acc, mod_range)
    t_server = (_now() - t0) / sample * n
    return {"client_s": t_client, "server_s": t_server, "upload_bits_per_entry": 8 * len(wire) / length,
            "client_sent_bits_per_entry": 8 * len(wire) / length, "version": flwr.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 16, 64])
    ap.add_argument("--lengths", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--neighbours", type=int, default=8, help="SecAgg+ degree k (complete graph if >= n-1)")
    ap.add_argument("--cipher", default="aes-ctr", choices=["aes-ctr", "chacha20"])
    ap.add_argument("--he-clients", type=int, default=2,
                    help="clients that really encrypt (HE) / are unmasked (Flower server)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["he", "tenseal-default", "flower"])
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args(argv)
    if any(n < 2 for n in args.clients) or any(length < 1 for length in args.lengths):
        raise ValueError("--clients: expected integers >= 2; --lengths: expected numbers >= 1")
    rng = np.random.default_rng(0)
    rows = []
    for n in args.clients:
        for length in (int(x) for x in args.lengths):
            vectors = [(rng.random(length) < 0.5).astype(np.uint8) for _ in range(n)]
            res = {"plaintext": bench_plain(vectors),
                   "pairwise": bench_pairwise(vectors, neighbours=args.neighbours, cipher=args.cipher)}
            if "he" not in args.skip:
                res["he"] = bench_he(vectors, sample=args.he_clients, default_params=False)
            if "tenseal-default" not in args.skip:
                res["tenseal-default"] = bench_he(vectors, sample=args.he_clients, default_params=True)
            if "flower" not in args.skip:
                flower = bench_flower(vectors, neighbours=args.neighbours, sample=args.he_clients)
                if flower is not None:
                    res["flower"] = flower
            for name, r in res.items():
                r.update(n=n, length=length, backend=name,
                         client_entries_per_s=length / r["client_s"] if r["client_s"] else float("inf"),
                         llama7b_client_s=r["client_s"] / length * LLAMA7B,
                         llama7b_upload_gb=r["upload_bits_per_entry"] * LLAMA7B / 8e9)
                rows.append(r)
            del vectors
            _print_block(n, length, res)
    if "flower" not in args.skip and not any(r["backend"] == "flower" for r in rows):
        print("flower: flwr is not importable here; comparison skipped")
    if args.json:
        meta = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                "machine": platform.machine()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


def _print_block(n: int, length: int, res: dict) -> None:
    pw = res["pairwise"]
    print(f"\n## n={n} clients, L={length:.0e} entries (pairwise: b={pw['bits']}, degree {pw['degree']})")
    print(f"{'backend':16s} {'client s':>9s} {'Mentr/s':>8s} {'server s':>9s} {'up b/entry':>10s} "
          f"{'all b/entry':>11s} {'x plain cl':>10s} {'x pw cl':>8s} {'7B client s':>11s} {'7B up GB':>9s}")
    for name, r in res.items():
        print(f"{name:16s} {r['client_s']:9.4f} {r['client_entries_per_s'] / 1e6:8.1f} {r['server_s']:9.3f} "
              f"{r['upload_bits_per_entry']:10.2f} {r['client_sent_bits_per_entry']:11.2f} "
              f"{r['client_s'] / res['plaintext']['client_s']:10.1f} {r['client_s'] / pw['client_s']:8.2f} "
              f"{r['llama7b_client_s']:11.1f} {r['llama7b_upload_gb']:9.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
