"""Run configuration: one dataclass, filled from defaults, then a TOML file, then CLI flags."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from secprune.model import UsageError
from secprune.topk import GROUPS


@dataclass
class PruneConfig:
    model: str = "smollm2-135m"
    algorithm: str = "fedprllm"
    method: str = "auto"  # auto: wanda for fedprllm, sparsegpt (+ OBS update) for fedspallm
    sparsegpt_update: bool | None = None  # None: off for fedprllm, on (required) for fedspallm
    clients: int = 16
    nsamples: int = 32
    seqlen: int = 512
    sparsity: float = 0.5
    local_group: str = "auto"  # auto: row (Wanda's per-output comparison); fedspallm: layer (SparseGPT's)
    server_group: str = "layer"
    strategy: str = "one-shot"
    scaling: bool = False
    partition: str = "iid"
    alpha: float = 5.0
    calib: str = "wiki-lead"
    client_data: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    eval: list[str] = field(default_factory=lambda: ["ptb", "wiki-lead"])
    eval_windows: int = 32
    eval_seqlen: int = 512
    baselines: list[str] = field(default_factory=lambda: ["dense", "centralized", "local-only"])
    local_only_clients: int = 4
    save_client_masks: bool = False
    secure_agg: str = "none"
    secagg_neighbours: int = 0
    batch_size: int = 8
    # --- FedSpaLLM (--algorithm fedspallm; see docs/fedspallm.md) ---
    rounds: int = 1  # communication rounds (Algorithm 1)
    expansion: bool = True  # adaptive mask expansion (Eqs. 6-7); --no-expansion keeps the clients' intersection
    layer_sampling: bool = False  # resource-aware layer sampling (Eqs. 8-9)
    resources: list[float] = field(default_factory=list)  # per-client fraction of layers per round, in (0, 1]
    fixed_point_bits: int = 16  # secure Eq. 5 sums: scale = 2^bits / bound (bound = 2 max|W| per matrix)
    # --- end FedSpaLLM ---
    out: str = "runs/prune"
    overwrite: bool = False

    def validate(self) -> PruneConfig:
        from secprune.federated import STRATEGIES
        from secprune.methods import METHODS
        from secprune.secagg import BACKENDS

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(msg)

        need(0.0 < self.sparsity < 1.0, f"--sparsity must lie in (0, 1), got {self.sparsity}")
        need(self.algorithm in ("fedprllm", "fedspallm"),
             f"--algorithm: expected fedprllm or fedspallm, got {self.algorithm!r}")
        need(self.method == "auto" or self.method in METHODS,
             f"--method: expected auto or one of {', '.join(METHODS)}, got {self.method!r}")
        if self.algorithm == "fedspallm":  # clients send SparseGPT-updated weights for Eq. 5 (FedSpaLLM Sec. 5)
            need(self.method in ("auto", "sparsegpt"),
                 f"--method {self.method}: --algorithm fedspallm runs SparseGPT with its OBS update at the clients "
                 "(Eq. 5 averages updated weights); use --algorithm fedprllm for other methods")
            need(self.sparsegpt_update is not False,
                 "--no-sparsegpt-update: --algorithm fedspallm needs SparseGPT's OBS weight update (Eq. 5 averages "
                 "the clients' updated weights)")
            for flag, ok in ((f"--strategy {self.strategy}", self.strategy == "one-shot"),
                             (f"--server-group {self.server_group}", self.server_group == "layer"),
                             ("--scaling", not self.scaling)):
                need(ok, f"{flag}: a FedPrLLM option; --algorithm fedspallm aggregates weights by Eq. 5 "
                         "(see --rounds, --expansion, --layer-sampling)")
            self.method, self.sparsegpt_update = "sparsegpt", True
            self.local_group = "layer" if self.local_group == "auto" else self.local_group
        else:
            for flag, ok in ((f"--rounds {self.rounds}", self.rounds == 1), ("--no-expansion", self.expansion),
                             ("--layer-sampling", not self.layer_sampling), ("--resources", not self.resources),
                             (f"--fixed-point-bits {self.fixed_point_bits}", self.fixed_point_bits == 16)):
                need(ok, f"{flag}: a FedSpaLLM option; pass --algorithm fedspallm "
                         "(FedPrLLM's own rounds are --strategy iterative)")
            self.method = "wanda" if self.method == "auto" else self.method
            self.sparsegpt_update = bool(self.sparsegpt_update)
            self.local_group = "row" if self.local_group == "auto" else self.local_group
        need(self.clients >= 1, f"--clients must be >= 1, got {self.clients}")
        need(self.nsamples >= 1, f"--nsamples must be >= 1, got {self.nsamples}")
        need(self.seqlen >= 2, f"--seqlen must be >= 2, got {self.seqlen}")
        need(self.local_group in GROUPS, f"--local-group: expected auto or one of {', '.join(GROUPS)}")
        need(self.server_group in GROUPS, f"--server-group: expected one of {', '.join(GROUPS)}")
        need(self.strategy in STRATEGIES, f"--strategy: expected one of {', '.join(STRATEGIES)}")
        need(self.partition in ("iid", "dirichlet"), f"--partition: expected iid or dirichlet, got {self.partition!r}")
        need(self.alpha > 0, f"--alpha must be > 0, got {self.alpha}")
        n_clients = len(self.client_data) or self.clients
        need(n_clients <= self.nsamples,
             f"--clients {n_clients}: more clients than calibration samples (--nsamples {self.nsamples})")
        need(self.device in ("cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device: expected cpu or cuda, got {self.device!r}")
        need(self.secure_agg in BACKENDS, f"--secure-agg: expected one of {', '.join(BACKENDS)}")
        need(self.eval_windows >= 0, f"--eval-windows must be >= 0, got {self.eval_windows}")
        for name in self.eval:
            need(name in ("ptb", "wiki-lead"), f"--eval: expected ptb or wiki-lead, got {name!r}")
        for b in self.baselines:
            need(b in ("dense", "centralized", "local-only", "random"),
                 f"--baselines: expected dense, centralized, local-only or random, got {b!r}")
        # --- FedSpaLLM ---
        need(self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}")
        need(1 <= self.fixed_point_bits <= 40, f"--fixed-point-bits must lie in [1, 40], got {self.fixed_point_bits}")
        try:
            self.resources = [float(r) for r in self.resources]
        except (TypeError, ValueError):
            raise UsageError(f"--resources: expected numbers in (0, 1], got {self.resources!r}") from None
        for r in self.resources:
            need(0.0 < r <= 1.0, f"--resources: each value must lie in (0, 1] (fraction of layers), got {r}")
        need(len(self.resources) in (0, 1, len(self.client_data) or self.clients),
             f"--resources: expected 1 value or one per client, got {len(self.resources)}")
        need(self.algorithm == "fedspallm" or "random" not in self.baselines,
             "--baselines random: only with --algorithm fedspallm")
        # --- end FedSpaLLM ---
        if self.client_data:
            self.clients = len(self.client_data)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def load_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config: {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {p} is not valid TOML ({exc})") from exc
    data = data.get("prune", data)
    known = {f.name for f in fields(PruneConfig)}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"--config: unknown keys {sorted(unknown)} in {p}")
    return data
