"""`secprune serve` and `secprune client`: the Flower deployment without writing Flower code.

``serve`` submits a run of secprune's Flower app (the same flags as ``secprune prune``) to a SuperLink, or
to Flower's local simulation engine with ``--simulation``, streams its log to stderr and prints the
server's result as JSON. ``client`` starts one ``flower-supernode`` for one client with its own data, keys
and state folder in its node config. Both only assemble Flower's own commands (shown with ``--dry-run``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from secprune import log, outdir
from secprune.errors import UsageError
from secprune.flower.localhost import free_port, stop_local_superlinks, write_connection


def register(sub, add_config_flags, config_from_args, emit) -> None:
    p = sub.add_parser("serve", help="run federated pruning on Flower (a SuperLink, or --simulation)",
                       description="Submit secprune's Flower ServerApp/ClientApp run with the options of `secprune "
                                   "prune` to a SuperLink (`flower-superlink`, clients started with `secprune "
                                   "client`), or run it in Flower's local simulation engine. Prints the server's "
                                   "result as JSON; the outputs (final mask, summary) go to --out.")
    add_config_flags(p)
    f = p.add_argument_group("flower")
    f.add_argument("--superlink", metavar="HOST:PORT", help="the SuperLink to submit to (its HTTP API, default port "
                                                             "of flower-superlink: 8000)")
    f.add_argument("--simulation", action="store_true",
                   help="run in Flower's local simulation engine instead (clients = partitions of --calib; "
                        "they read their keys from --keys)")
    f.add_argument("--directory", metavar="FILE", help="the pinned key directory (directory.json of `secprune "
                                                        "keys`) the server verifies signatures with (pairwise, he)")
    f.add_argument("--authority", metavar="HEX|FILE",
                   help="the key that signed --directory (64 hex digits or authority.pub of `secprune keys`); "
                        "default: authority.pub beside the directory, when present")
    f.add_argument("--keys", metavar="DIR", help="--simulation with pairwise/he: the keys folder every simulated "
                                                 "node reads its own key from")
    f.add_argument("--root-certificates", metavar="PEM", help="TLS: the CA certificate of the SuperLink "
                                                               "(default: --insecure, localhost only)")
    f.add_argument("--stage-timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for the replies of one protocol stage; a client silent longer has "
                        "dropped (default: 600)")
    f.add_argument("--parallel", type=int, default=0, metavar="K",
                   help="prune on at most K clients at once (bounds memory when they share a machine; 0 = all)")
    f.add_argument("--evaluate", action="store_true", help="the server evaluates the final model's perplexity")
    f.add_argument("--flower-home", metavar="DIR", help="FLWR_HOME for the Flower CLI (default: a temporary one)")
    f.add_argument("--dry-run", action="store_true", help="print the flwr command and run config, run nothing")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=lambda args: cmd_serve(args, config_from_args, emit))

    c = sub.add_parser("client", help="start one Flower SuperNode for one client",
                       description="Start `flower-supernode` for one client of a `secprune serve` run: its own "
                                   "text (--client-data) or its partition of a built-in corpus, its own key, its "
                                   "own state folder. Runs until stopped.")
    c.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's Fleet API address")
    c.add_argument("--client-id", type=int, metavar="I", help="this client's index (0..clients-1)")
    c.add_argument("--client-data", metavar="PATH", help="this client's private text (a UTF-8 file or a folder "
                                                         "of .txt files); never leaves this node")
    c.add_argument("--partition", type=int, metavar="I", help="instead of --client-data: partition I of the "
                                                              "run's built-in --calib corpus")
    c.add_argument("--num-partitions", type=int, metavar="N", help="with --partition: the number of clients")
    c.add_argument("--keys", metavar="DIR", help="folder with this client's client<I>.pem and the pinned "
                                                 "directory.json (pairwise, he)")
    c.add_argument("--key-holder", action="store_true", help="run the he key holder instead of a client")
    c.add_argument("--authority", metavar="HEX|FILE",
                   help="the key that signed directory.json (default: authority.pub in --keys, when present); a "
                        "directory without its valid signature is refused")
    c.add_argument("--secagg-colluders", metavar="COUNT|FRACTION",
                   help="clients this client assumes may collude with the server; it refuses a session whose "
                        "threshold is unsafe for them (default: 1/3, as `secprune prune`)")
    c.add_argument("--secagg-min-contributors", type=int, metavar="M",
                   help="it refuses to add its input to a sum over fewer clients (default: colluders + 3)")
    c.add_argument("--state-dir", metavar="DIR", help="owner-only folder for this client's state between "
                                                      "messages (default: ~/.cache/secprune/flower/...)")
    c.add_argument("--port", type=int, default=9094, metavar="P", help="this SuperNode's local ClientAppIo port "
                                                                      "(one per SuperNode on a machine)")
    c.add_argument("--root-certificates", metavar="PEM", help="TLS: the SuperLink's CA certificate")
    c.add_argument("--auth-key", metavar="PEM", help="node authentication: this SuperNode's private key (the "
                                                     "SuperLink must list its public key)")
    c.add_argument("--dry-run", action="store_true", help="print the flower-supernode command, run nothing")
    c.add_argument("--test-hang-at", metavar="STAGE", help=argparse.SUPPRESS)  # tests: a node that stops
    c.add_argument("--quiet", action="store_true", help="print errors only")
    c.set_defaults(func=cmd_client)


def _toml_str(v: str) -> str:
    return json.dumps(str(v))  # a TOML basic string


def node_config(args: argparse.Namespace) -> str:
    """The --node-config string of one SuperNode."""
    items: dict[str, object] = {}
    if args.key_holder:
        items["role"] = "keyholder"
    else:
        if args.client_id is None and args.partition is None:
            raise UsageError("--client-id: expected the client's index (or --partition)")
        if args.client_data and args.partition is not None:
            raise UsageError("--partition: not with --client-data (a client has its own text or a partition)")
        if args.partition is not None and args.num_partitions is None:
            raise UsageError("--num-partitions: needed with --partition")
        items["client-id"] = args.client_id if args.client_id is not None else args.partition
        if args.client_data:
            path = Path(args.client_data)
            if not path.exists():
                raise UsageError(f"--client-data: {path} does not exist")
            items["data"] = str(path.resolve())
        elif args.partition is not None:
            items["partition-id"], items["num-partitions"] = args.partition, args.num_partitions
        else:
            raise UsageError("--client-data: expected this client's text (or --partition I --num-partitions N)")
    if args.keys:
        if not Path(args.keys).is_dir():
            raise UsageError(f"--keys: {args.keys} is not a folder")
        items["keys"] = str(Path(args.keys).resolve())
    if args.authority:
        from secprune.secagg.identity import read_authority

        try:
            items["authority"] = read_authority(args.authority).hex()
        except ValueError as exc:
            raise UsageError(f"--authority: {exc}") from None
    if args.secagg_colluders is not None:
        items["secagg-colluders"] = str(args.secagg_colluders)
    if args.secagg_min_contributors is not None:
        items["secagg-min-contributors"] = args.secagg_min_contributors
    if args.state_dir:
        items["state-dir"] = str(Path(args.state_dir).resolve())
    if getattr(args, "test_hang_at", None):
        items["test-hang-at"] = args.test_hang_at
    return " ".join(f"{k}={_toml_str(v) if isinstance(v, str) else v}" for k, v in items.items())


def cmd_client(args: argparse.Namespace) -> int:
    cmd = ["flower-supernode", "--superlink", args.superlink, "--port", str(args.port),
           "--node-config", node_config(args)]
    cmd += ["--root-certificates", args.root_certificates] if args.root_certificates else ["--insecure"]
    if args.auth_key:
        cmd += ["--auth-supernode-private-key", args.auth_key]
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    log.info(f"starting: {shlex.join(cmd)}")
    return run_tree(cmd)


def run_tree(cmd: list[str], *, grace: float = 10.0) -> int:
    """Run ``cmd`` in a process group of its own and wait; however this process ends (SIGTERM, ^C, an error),
    the whole group goes with it: the SuperNode and the ClientApps it started, none left to init."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                time.sleep(0.2)  # children of the group that outlive their parent by a moment


def cmd_serve(args: argparse.Namespace, config_from_args, emit) -> int:
    import tomli_w

    from secprune.flower import APP_DIR
    from secprune.flower.settings import run_config_from

    if bool(args.superlink) == bool(args.simulation):
        raise UsageError("--superlink: expected a SuperLink address, or --simulation (exactly one of them)")
    cfg = config_from_args(args)
    if args.simulation and cfg.client_data:
        raise UsageError("--client-data: the simulation engine gives simulated nodes partitions of --calib; "
                         "start real clients with `secprune client --client-data` and `serve --superlink`")
    if not args.simulation and cfg.client_data:
        raise UsageError("--client-data: each client passes its own text to `secprune client`; the server never "
                         "sees it")
    explicit = getattr(cfg, "_explicit", set())  # before validate(), which may fill in defaults
    cfg.validate()
    asked = [f"--{n.replace('_', '-')}" for n in ("eval", "eval_windows", "eval_seqlen", "baselines")
             if n in explicit and (getattr(cfg, n) or n in ("eval_windows", "eval_seqlen"))]  # `--eval` alone: off
    if asked and not args.evaluate:
        raise UsageError(f"{', '.join(asked)}: the Flower server evaluates only with --evaluate (and computes no "
                         "baselines); add --evaluate or drop them")
    if "baselines" in explicit and cfg.baselines:
        raise UsageError("--baselines: not in the Flower apps (no party there holds every window); use "
                         "`secprune prune` for baselines")
    if cfg.dp_noise != "none":
        raise UsageError(f"--dp-noise {cfg.dp_noise}: not yet in the Flower apps (the clients would add their "
                         "noise shares in the client app); use `secprune prune` for distributed DP")
    if cfg.secure_agg != "none" and not args.directory:
        raise UsageError(f"--directory: --secure-agg {cfg.secure_agg} needs the pinned key directory "
                         "(directory.json of `secprune keys`)")
    out = Path(cfg.out).resolve()
    tag = os.urandom(8).hex()
    directory = str(Path(args.directory).resolve()) if args.directory else ""
    authority = ""
    if args.authority:
        from secprune.secagg.identity import read_authority

        try:
            authority = read_authority(args.authority).hex()
        except ValueError as exc:
            raise UsageError(f"--authority: {exc}") from None
    elif directory and (Path(directory).parent / "authority.pub").is_file():
        authority = str(Path(directory).parent / "authority.pub")
    run_config = run_config_from(cfg, out=str(out), run_tag=tag, directory=directory, authority=authority,
                                 key_holder=cfg.secure_agg == "he", stage_timeout=args.stage_timeout,
                                 parallel=args.parallel, evaluate=args.evaluate,
                                 keys=str(Path(args.keys).resolve()) if args.keys else "")
    temporary_home = not args.flower_home
    home = Path(args.flower_home or tempfile.mkdtemp(prefix="secprune-flwr-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    name = "secprune-sim" if args.simulation else "secprune"
    conn: dict = {"address": ":local:"} if args.simulation else {"address": args.superlink}
    if args.simulation:
        conn["options"] = {"num-supernodes": cfg.clients + (1 if cfg.secure_agg == "he" else 0)}
    elif args.root_certificates:
        conn["root-certificates"] = str(Path(args.root_certificates).resolve())
    else:
        conn["insecure"] = True
    write_connection(home, name, conn)
    rc_path = home / "run_config.toml"
    rc_path.write_text(tomli_w.dumps(run_config))
    cmd = ["flwr", "run", str(APP_DIR), name, "--run-config", str(rc_path), "--stream"]
    if args.dry_run:  # runnable as printed: the Flower home it needs is kept
        print(f"FLWR_HOME={shlex.quote(str(home))} {shlex.join(cmd)}")
        print(rc_path.read_text())
        return 0
    outdir.check_target(out, overwrite=cfg.overwrite)  # the same rule as `secprune prune` (marker file)
    env = dict(os.environ, FLWR_HOME=str(home))
    if args.simulation:
        # Flower's local SuperLink outlives `flwr run` and is reused by any later run on its ports, even one
        # whose FLWR_HOME is gone: give this run one of its own on free ports, and stop it afterwards.
        env.update(FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
    log.info(f"running: FLWR_HOME={home} {shlex.join(cmd)}")
    try:
        code = subprocess.call(cmd, env=env, stdout=sys.stderr if not args.quiet else subprocess.DEVNULL,
                               stderr=subprocess.STDOUT if not args.quiet else subprocess.DEVNULL)
    finally:
        if args.simulation:
            stop_local_superlinks(home)
        if temporary_home:
            shutil.rmtree(home, ignore_errors=True)
    summary = out / "summary.json"
    s = json.loads(summary.read_text()) if summary.is_file() else {}
    if code != 0 or s.get("run_tag") != tag:
        why = (f"`flwr run` exited with code {code}" if code else "the ServerApp wrote no result (`flwr run` "
               "exits 0 whatever the ServerApp's own status; its log above says why)")
        print(f"secprune: error: the Flower run failed: {why}; no new output in {out}", file=sys.stderr)
        return 1
    emit({"out": str(out), "engine": "flower-simulation" if args.simulation else "flower",
          "mask_sparsity": s["sparsity"]["mask"], "results": s["results"], "time_s": s["time_s"]})
    return 0
