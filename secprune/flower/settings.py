"""The run configuration of a Flower run: :class:`~secprune.config.PruneConfig` as Flower's flat ``run_config``.

Flower's run config holds TOML scalars only, under the names of ``[tool.flwr.app.config]`` in the app's
pyproject.toml. Every PruneConfig field appears there with its default (lists as comma-separated strings,
``None`` as ``""``), plus the Flower driver's own keys (:data:`FLOWER_KEYS`). ``flwr run -c 'k=v'`` or
``secprune serve`` override them. A client's own data is never in the run config: it is in the node's
``--node-config`` (``data``, or ``partition-id``/``num-partitions`` of a built-in corpus).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from secprune.config import PruneConfig, config_from

#: the Flower driver's own settings, with their defaults
FLOWER_KEYS: dict[str, object] = {
    "out": "runs/flower",  # the server's output folder (final mask, summary), as `secprune prune --out`
    "directory": "",  # pinned key directory (directory.json of `secprune keys`), for pairwise and he
    "authority": "",  # the key that signed the directory (hex or a file); default: authority.pub beside it
    "key-holder": False,  # he: one SuperNode runs with --node-config "role='keyholder'"
    "stage-timeout": 600.0,  # seconds the server waits for the replies of one protocol stage
    "node-wait": 120.0,  # seconds the server waits for the expected SuperNodes to connect
    "parallel": 0,  # clients asked at once in a pruning step (0 = all): bounds memory on one machine
    "evaluate": False,  # perplexity of the final model on the server's public test sets
    "wiretap": "",  # test aid: append every content the server receives to this file
    "keys": "",  # simulation engine only: the keys folder every simulated node reads its own key from
    "run-tag": "",  # set by `secprune serve`, echoed in summary.json (so a stale output is never mistaken)
}
NOT_IN_FLOWER = ("client_data", "out", "overwrite", "save_client_masks", "keep_calibration", "secagg_keys",
                 "device", "baselines", "local_only_clients", "dp_noise", "dp_lambda", "dp_dropouts", "dp_colluders")


def _key(name: str) -> str:
    return name.replace("_", "-")


def _flat(value, typ: str) -> object:
    """A TOML scalar of one stable type per key: optional values and lists become strings."""
    if "None" in typ:
        return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def run_config_defaults() -> dict[str, object]:
    """Every key of the app's run config with its default."""
    out: dict[str, object] = {}
    for f in fields(PruneConfig):
        if f.name in NOT_IN_FLOWER:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        out[_key(f.name)] = _flat(default, str(f.type))
    out["clients"] = "2"
    out["eval"] = "ptb"
    out["eval-windows"] = 4
    return out | {k: v for k, v in FLOWER_KEYS.items()}


def run_config_from(cfg: PruneConfig, **extra) -> dict[str, object]:
    """The run config of a validated PruneConfig (and Flower keys), for ``flwr run -c``."""
    out = {}
    for f in fields(PruneConfig):
        if f.name not in NOT_IN_FLOWER:
            out[_key(f.name)] = _flat(getattr(cfg, f.name), str(f.type))
    return out | {_key(k): v for k, v in extra.items()}


def config_from_run(run_config) -> tuple[PruneConfig, dict]:
    """(validated PruneConfig, Flower keys) from a Flower ``run_config``."""
    values, explicit = {}, set()
    for f in fields(PruneConfig):
        key = _key(f.name)
        if f.name in NOT_IN_FLOWER or key not in run_config:
            continue
        raw = run_config[key]
        typ = str(f.type)
        if typ.startswith("list"):
            items = [s.strip() for s in str(raw).split(",") if s.strip()]
            value = [float(s) for s in items] if "float" in typ else items
        elif "None" in typ:
            text = str(raw).strip().lower()
            value = None if text == "" else (text == "true") if "bool" in typ else int(text) if "int" in typ \
                else str(raw).strip()
        else:
            value = raw
        values[f.name] = value
    values["baselines"] = []
    extras = {k: run_config.get(k, v) for k, v in FLOWER_KEYS.items()}
    cfg = config_from(values, explicit)
    return cfg.validate(), extras


APP_DIR = Path(__file__).parent / "app"


def app_pyproject() -> str:
    """The Flower app's pyproject.toml: components in this package, every setting with its default."""
    import tomli_w

    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "secprune-flower", "version": "1.0.0", "license": "Apache-2.0",
                    "description": "secprune's federated pruning (FedPrLLM, FedSpaLLM) with its own secure "
                                   "aggregation, as a Flower ServerApp and ClientApp",
                    "dependencies": []},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "secprune",
                                  "components": {"serverapp": "secprune.flower.server_app:app",
                                                 "clientapp": "secprune.flower.client_app:app"},
                                  "config": run_config_defaults()}}},
    }
    return "# Generated by secprune.flower.settings.app_pyproject(); tests check it is current.\n" + tomli_w.dumps(doc)
