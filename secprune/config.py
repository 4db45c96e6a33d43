"""Run configuration: one dataclass, filled from defaults, then a TOML file, then CLI flags.

Each field carries its help text, its group and its choices in ``metadata``: the CLI builds its flags
and ``--help`` from them, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from secprune.errors import UsageError
from secprune.models_registry import DEFAULT_MODEL
from secprune.models_registry import describe as describe_models
from secprune.zeroshot_data import TASKS as ZEROSHOT_TASKS

GROUPS = ("model and run", "data", "local pruning", "server", "secure aggregation", "differential privacy",
          "FedSpaLLM", "evaluation", "output")


def opt(default=MISSING, *, help: str, group: str, choices: tuple | None = None, metavar: str | None = None,
        factory=None):
    """A config field with its CLI documentation."""
    md = {"help": help, "group": group, "choices": choices, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass
class PruneConfig:
    # --- model and run
    model: str = opt(DEFAULT_MODEL, group="model and run", metavar="NAME|DIR",
                     help=f"built-in model: {describe_models()}; the ones other than {DEFAULT_MODEL} are "
                          "installed by scripts/setup.sh --models NAME; or a Hugging Face causal-LM folder")
    algorithm: str = opt("fedprllm", group="model and run", choices=("fedprllm", "fedspallm"),
                         help="fedprllm: clients send binary masks and the server keeps the most-voted weights "
                              "(Guo et al. 2025); fedspallm: clients send SparseGPT-pruned weights, l0-norm "
                              "aggregation (Bai et al. 2025)")
    device: str = opt("cpu", group="model and run", metavar="DEV", help="cpu, cuda or cuda:N")
    seed: int = opt(0, group="model and run",
                    help="seed of the calibration draw, the client split and every tie-break")
    batch_size: int = opt(8, group="model and run", help="windows per forward pass (memory against speed)")
    # --- data
    clients: int | None = opt(None, group="data",
                              help="number of simulated clients (default: 16, or one per --client-data file)")
    nsamples: int = opt(32, group="data",
                        help="calibration windows in total, split across the clients (Wanda/SparseGPT use 128)")
    samples_per_client: int | None = opt(None, group="data", metavar="N",
                                         help="calibration windows of each client, its own (FedSpaLLM Sec. 5 gives "
                                              "each client 32 x 2048 tokens); --nsamples becomes N x --clients")
    seqlen: int = opt(512, group="data", help="tokens per calibration window (at most the model's context)")
    calib: str = opt("wiki-lead", group="data", metavar="SOURCES",
                     help="public corpus of the simulated clients: ptb, wiki-lead, brown, brown:<genre>, or "
                          "several comma-separated (for --partition dirichlet)")
    partition: str = opt("iid", group="data", choices=("iid", "dirichlet"),
                         help="how windows are split across clients: iid, or a Dirichlet mix over the --calib "
                              "sources (non-IID)")
    alpha: float = opt(5.0, group="data",
                       help="Dirichlet concentration, smaller = more skewed (only with --partition dirichlet)")
    client_data: list[str] = opt(group="data", factory=list, metavar="PATH",
                                 help="one UTF-8 text file, or folder of .txt files, per client: each client's own "
                                      "private text (replaces --calib; never cached or copied to the output)")
    # --- local pruning
    method: str = opt("auto", group="local pruning", choices=("auto", "wanda", "sparsegpt", "magnitude"),
                      help="the clients' pruning method; auto = wanda for fedprllm, sparsegpt with its OBS "
                           "update for fedspallm")
    sparsegpt_update: bool | None = opt(None, group="local pruning",
                                        help="with --method sparsegpt: clients also apply SparseGPT's OBS weight "
                                             "update to their own next-layer inputs (one-shot only) "
                                             "(default: off for fedprllm, always on for fedspallm)")
    sparsity: float = opt(0.5, group="local pruning", help="fraction of each prunable matrix to prune, in (0, 1)")
    local_group: str = opt("auto", group="local pruning", choices=("auto", "row", "layer", "column"),
                           help="comparison group of the clients' top-k; auto = row (Wanda) for fedprllm, "
                                "layer (SparseGPT) for fedspallm")
    numerics: str = opt("default", group="local pruning", choices=("default", "reference"),
                        help="reference: reproduce upstream Wanda/FedPrLLM bit for bit (float32 running mean of the "
                             "squared norms per calibration sample, ties to the lower index as a stable sort, "
                             "windows drawn with Python's random.seed/randint and split by random.shuffle as their "
                             "loaders do, one window per forward); default: float64 sums, seeded tie-breaks")
    # --- server
    server_group: str = opt("layer", group="server", choices=("layer", "row", "column"),
                            help="comparison group of the server's vote top-k (FedPrLLM Table 2)")
    strategy: str = opt("one-shot", group="server", choices=("one-shot", "iterative"),
                        help="one-shot: all masks sent once; iterative: layer by layer, the global mask broadcast "
                             "after each layer")
    scaling: bool = opt(False, group="server",
                        help="scale kept weights by (m - votes) / m (FedPrLLM step 6)")
    # --- secure aggregation
    secure_agg: str = opt("none", group="secure aggregation", choices=("none", "pairwise", "he"),
                          help="how the server sums the clients' vectors: none (plaintext), pairwise (SecAgg / "
                               "SecAgg+ masking), he (TenSEAL BFV); the final mask is identical")
    secagg_colluders: str | None = opt(None, group="secure aggregation", metavar="COUNT|FRACTION",
                                       help="clients that may collude with the server (a count, or a fraction of "
                                            "the clients such as 1/3); the neighbour degree and threshold are "
                                            "derived from it with failure probability 2^-40 (default: 1/3)")
    secagg_dropouts: str | None = opt(None, group="secure aggregation", metavar="COUNT|FRACTION",
                                      help="dropouts every sum must survive (a count or a fraction; default: 1/10)")
    secagg_min_contributors: int | None = opt(None, group="secure aggregation", metavar="M",
                                              help="clients behind every released sum, at least 3 and at least 2 "
                                                   "beside the colluders (default: colluders + 3)")
    secagg_neighbours: int = opt(0, group="secure aggregation",
                                 help="--secure-agg pairwise: SecAgg+ neighbour degree k, even and >= 4, or n-1 "
                                      "for the complete graph (0 = derived from the colluders and dropouts); "
                                      "refused where unsafe, see docs/secagg.md")
    secagg_threshold: int | None = opt(None, group="secure aggregation",
                                       help="survivors needed to finish a sum (pairwise: of each client's share "
                                            "holders; he: of the clients); refused below the safe level for the "
                                            "colluders (default: the smallest safe one)")
    secagg_validate: bool = opt(True, group="secure aggregation",
                                help="--secure-agg he: every client proves its mask valid (0/1 entries, exactly k "
                                     "pruned per comparison group, ciphertexts that encrypt it) to the server and "
                                     "key holder together; an invalid one is named and left out "
                                     "(--no-secagg-validate skips the proofs)")
    secagg_keys: str | None = opt(None, group="secure aggregation", metavar="DIR",
                                  help="--secure-agg pairwise: folder of the clients' long-term Ed25519 keys and "
                                       "the pinned key directory (made by `secprune keys`); default: fresh keys "
                                       "for this run")
    # --- differential privacy (secprune.dp_stats, secprune.dp_sum; docs/privacy.md)
    dp: str = opt("none", group="differential privacy", choices=("none", "statistics"),
                  help="statistics: each client privatizes its calibration statistics (Wanda's feature norms, "
                       "SparseGPT's Hessian) with Gaussian noise before any mask is computed, so masks, sums and "
                       "the pruned model are post-processing; the guarantee is per client and --dp-unit")
    dp_epsilon: float = opt(8.0, group="differential privacy", metavar="EPS",
                            help="--dp statistics: each client's epsilon over the whole run, every layer composed")
    dp_unit: str = opt("window", group="differential privacy", choices=("window", "client"),
                       help="--dp statistics: what is protected: one calibration window (add/remove), or all of a "
                            "client's data")
    dp_noise: str = opt("none", group="differential privacy", choices=("none", "skellam"),
                        help="noise each client adds to its vote vector inside the secure sum: none, or skellam "
                             "(distributed Skellam mechanism; fedprllm only)")
    dp_lambda: float = opt(0.0, group="differential privacy", metavar="LAMBDA",
                           help="--dp-noise skellam: Skellam parameter of the guaranteed total noise per vote count "
                                "(variance 2 LAMBDA); each client adds LAMBDA / (clients - dropouts - colluders)")
    dp_dropouts: int = opt(0, group="differential privacy",
                           help="--dp-noise: dropouts the accounting tolerates (the noise is scaled up for them)")
    dp_colluders: int = opt(0, group="differential privacy",
                            help="--dp-noise: clients that may share their noise with the server (the noise is "
                                 "scaled up for them)")
    dp_delta: float = opt(1e-5, group="differential privacy",
                          help="--dp statistics / --dp-noise: delta of the (epsilon, delta) guarantee")
    # --- FedSpaLLM
    rounds: int = opt(1, group="FedSpaLLM", help="communication rounds (Algorithm 1)")
    expansion: bool = opt(True, group="FedSpaLLM",
                          help="adaptive mask expansion (Eqs. 6-7); --no-expansion keeps the clients' intersection")
    layer_sampling: bool = opt(False, group="FedSpaLLM", help="resource-aware layer sampling (Eqs. 8-9)")
    resources: list[float] = opt(group="FedSpaLLM", factory=list, metavar="FRACTION",
                                 help="with --layer-sampling: fraction of layers each client prunes per round, "
                                      "in (0, 1]; one value for all or one per client")
    fixed_point_bits: int = opt(16, group="FedSpaLLM",
                                help="with --secure-agg: fixed-point bits of the secure Eq. 5 sums "
                                     "(scale 2^bits / (2 max|W|))")
    # --- evaluation
    eval: list[str] = opt(group="evaluation", factory=lambda: ["ptb", "wiki-lead"], metavar="SET",
                          choices=("ptb", "wiki-lead", "zero-shot"),
                          help="what to evaluate every model on: perplexity on ptb, wiki-lead (Wikipedia lead "
                               "sections, not WikiText-2), and/or zero-shot accuracy (lm-eval's scoring of "
                               "--zeroshot-tasks; needs scripts/setup.sh --zeroshot); give no value to skip "
                               "evaluation")
    eval_windows: int = opt(32, group="evaluation", help="windows per test set; 0 = the whole test set")
    eval_seqlen: int = opt(512, group="evaluation", help="tokens per evaluation window")
    zeroshot_tasks: list[str] = opt(group="evaluation", factory=lambda: list(ZEROSHOT_TASKS), metavar="TASK",
                                    choices=ZEROSHOT_TASKS,
                                    help="with --eval zero-shot: the tasks (FedPrLLM's seven and RTE)")
    zeroshot_examples: int = opt(100, group="evaluation",
                                 help="with --eval zero-shot: questions per task, a subset drawn from --seed "
                                      "(the same for every model of the run); 0 = every question")
    baselines: list[str] = opt(group="evaluation", factory=lambda: ["dense", "centralized", "local-only"],
                               metavar="NAME", choices=("dense", "centralized", "local-only", "random"),
                               help="also evaluate: dense, centralized (one client with all windows), local-only "
                                    "(each client alone; FedSpaLLM's 'standalone'), random (fedspallm)")
    local_only_clients: int = opt(4, group="evaluation",
                                  help="local-only: how many clients' own models to evaluate (the mean is reported)")
    # --- output
    out: str = opt("runs/prune", group="output", metavar="DIR",
                   help="output folder (written under a temporary name, renamed on success)")
    overwrite: bool = opt(False, group="output", help="replace --out if it is an earlier secprune output")
    save_client_masks: bool = opt(False, group="output",
                                  help="also keep every client's mask (the audits need them), owner-only, in "
                                       "<out>/private/")
    keep_calibration: bool = opt(False, group="output",
                                 help="also keep the clients' calibration token ids, owner-only, in <out>/private/ "
                                      "(audits can recompute them from the data instead)")

    def validate(self) -> PruneConfig:
        """Check every value and every combination, one option group at a time; resolve the ``auto``
        defaults. Raises UsageError."""
        explicit = getattr(self, "_explicit", None)
        if explicit is None:  # built in Python: treat every non-default value as given
            explicit = {f.name for f in fields(self) if getattr(self, f.name) != _default(f)}

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(msg)

        for check in (self._check_values, self._check_data, self._check_evaluation, self._check_secure_aggregation,
                      self._check_privacy, self._check_algorithm, self._check_reference, self._check_fedspallm):
            check(need, explicit)
        return self

    def _check_values(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """Every value in its range and among its choices."""
        from secprune.secagg import BACKENDS

        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            for v in value if isinstance(value, list) else [value]:
                need(not choices or v in choices,
                     f"--{_flag(f.name)}: expected one of {', '.join(choices or ())}, got {v!r}")
        need(0.0 < self.sparsity < 1.0, f"--sparsity must lie in (0, 1), got {self.sparsity}")
        need(self.clients is None or self.clients >= 1, f"--clients must be >= 1, got {self.clients}")
        need(0 <= self.seed < 2**63, f"--seed must be an integer in [0, 2^63), got {self.seed}")
        need(self.nsamples >= 1, f"--nsamples must be >= 1, got {self.nsamples}")
        need(self.seqlen >= 2, f"--seqlen must be >= 2, got {self.seqlen}")
        need(self.eval_seqlen >= 2, f"--eval-seqlen must be >= 2, got {self.eval_seqlen}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.alpha > 0, f"--alpha must be > 0, got {self.alpha}")
        need(self.eval_windows >= 0, f"--eval-windows must be >= 0 (0 = all), got {self.eval_windows}")
        need(self.zeroshot_examples >= 0, f"--zeroshot-examples must be >= 0 (0 = all), got {self.zeroshot_examples}")
        need(self.local_only_clients >= 1, f"--local-only-clients must be >= 1, got {self.local_only_clients}")
        need(self.device in ("cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
             f"--device: expected cpu, cuda or cuda:N, got {self.device!r}")
        need(self.secure_agg in BACKENDS, f"--secure-agg: expected one of {', '.join(BACKENDS)}")
        model_dir = Path(self.model).expanduser()
        need(not model_dir.is_dir() or not Path(self.out).expanduser().resolve().is_relative_to(model_dir.resolve()),
             f"--out {self.out}: inside the model folder {self.model}; expected a folder outside it")

    def _check_data(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """The simulated clients or the user's own files, not both."""
        if self.client_data:
            n_files = len(self.client_data)
            need("clients" not in explicit or self.clients == n_files,
                 f"--clients {self.clients}: contradicts the {n_files} --client-data paths (one client per path)")
            need("calib" not in explicit, "--calib: not used with --client-data (each client reads its own text)")
            need(self.partition == "iid",
                 "--partition dirichlet: not used with --client-data (each client's own text is its partition)")
            self.clients = n_files
        elif self.clients is None:
            self.clients = 16
        need("alpha" not in explicit or self.partition == "dirichlet",
             f"--alpha {self.alpha}: only used with --partition dirichlet")
        if self.samples_per_client is not None:  # each client its own N windows, not a share of --nsamples
            need(self.samples_per_client >= 1, f"--samples-per-client must be >= 1, got {self.samples_per_client}")
            need(self.partition == "iid", "--samples-per-client: every client holds N windows; not with "
                                          "--partition dirichlet (which gives clients unequal shares)")
            total = self.samples_per_client * self.clients
            need("nsamples" not in explicit or self.nsamples == total,
                 f"--nsamples {self.nsamples}: contradicts --samples-per-client {self.samples_per_client} x "
                 f"{self.clients} clients (= {total} windows); give one of them")
            self.nsamples = total
        need(self.clients <= self.nsamples,
             f"--clients {self.clients}: more clients than calibration windows (--nsamples {self.nsamples})")

    def _check_evaluation(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """Evaluation and baselines."""
        for name in ("zeroshot_tasks", "zeroshot_examples"):
            need(name not in explicit or "zero-shot" in self.eval, f"--{_flag(name)}: only used with --eval zero-shot")
        need(bool(self.zeroshot_tasks) or "zero-shot" not in self.eval, "--zeroshot-tasks: give at least one task")
        if self.eval and set(self.eval) == {"zero-shot"}:
            for name in ("eval_windows", "eval_seqlen"):
                need(name not in explicit, f"--{_flag(name)}: only used with a perplexity set (--eval ptb wiki-lead)")
        if not self.eval:
            for name in ("eval_windows", "eval_seqlen", "baselines"):
                need(name not in explicit or (name == "baselines" and not self.baselines),
                     f"--{_flag(name)}: no test set to evaluate on (--eval was given no value)")
            self.baselines = []
        need("local_only_clients" not in explicit or "local-only" in self.baselines,
             "--local-only-clients: only used with --baselines local-only")
        need("local_only_clients" not in explicit or self.local_only_clients <= self.clients,
             f"--local-only-clients {self.local_only_clients}: at most --clients ({self.clients})")

    def _check_secure_aggregation(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """The protocol's own safety floor (docs/secagg.md)."""
        from secprune.secagg import check_options

        try:
            check_options(self.secure_agg, n_clients=self.clients, neighbours=self.secagg_neighbours or None,
                          threshold=self.secagg_threshold, colluders=self.secagg_colluders,
                          dropouts=self.secagg_dropouts, min_contributors=self.secagg_min_contributors)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        need(self.secagg_validate or self.secure_agg == "he", "--no-secagg-validate: only used with --secure-agg he")
        need(self.secagg_keys is None or self.secure_agg == "pairwise",
             "--secagg-keys: only used with --secure-agg pairwise")
        need(self.secagg_keys is None or Path(self.secagg_keys).is_dir(),
             f"--secagg-keys: {self.secagg_keys} is not a folder (make one with `secprune keys`)")
        need(self.secagg_threshold is None or not self.layer_sampling,
             "--secagg-threshold: not with --layer-sampling (each layer's sum runs over the clients that sampled "
             "it, with the safe default threshold for their number)")

    def _check_privacy(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """DP at the source (the statistics) and distributed noise (the vote sums)."""
        # differential privacy at the source: the clients' statistics
        if self.dp == "none":
            for name in ("dp_epsilon", "dp_unit"):
                need(name not in explicit, f"--{_flag(name)}: only used with --dp statistics")
        else:
            need(self.dp_epsilon > 0, f"--dp-epsilon must be > 0, got {self.dp_epsilon}")
            need(0 < self.dp_delta < 1, f"--dp-delta must lie in (0, 1), got {self.dp_delta}")
            need(self.numerics == "default", "--numerics reference: reproduces upstream bit for bit; not with --dp")
            need(self.dp_noise == "none", "--dp statistics: not with --dp-noise (noise the statistics or the vote "
                                          "sums, not both)")
        # differential privacy: distributed noise on FedPrLLM's vote sums
        if self.dp_noise == "none":
            for name in ("dp_lambda", "dp_dropouts", "dp_colluders"):
                need(name not in explicit, f"--{_flag(name)}: only used with --dp-noise skellam")
            need(self.dp != "none" or "dp_delta" not in explicit,
                 "--dp-delta: only used with --dp statistics or --dp-noise skellam")
        else:
            need(self.algorithm == "fedprllm",
                 f"--dp-noise {self.dp_noise}: only with --algorithm fedprllm (it noises FedPrLLM's vote sums)")
            need(self.dp_lambda > 0, f"--dp-lambda must be > 0 with --dp-noise {self.dp_noise}, got {self.dp_lambda}")
            need(self.dp_dropouts >= 0 and self.dp_colluders >= 0,
                 "--dp-dropouts and --dp-colluders must be >= 0")
            need(self.dp_dropouts + self.dp_colluders < self.clients,
                 f"--dp-dropouts {self.dp_dropouts} + --dp-colluders {self.dp_colluders}: must leave at least one "
                 f"honest client of {self.clients}")
            need(0 < self.dp_delta < 1, f"--dp-delta must lie in (0, 1), got {self.dp_delta}")
            need(not self.scaling, "--scaling: not with --dp-noise (scale factors need exact vote counts in [0, m])")

    def _check_algorithm(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """Each algorithm's own options; resolves the auto method and comparison group."""
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
            need(not self.save_client_masks, "--save-client-masks: only for --algorithm fedprllm (FedSpaLLM "
                                             "clients send weights, not masks)")
            self.method, self.sparsegpt_update = "sparsegpt", True
            self.local_group = "layer" if self.local_group == "auto" else self.local_group
        else:
            for flag, ok in ((f"--rounds {self.rounds}", self.rounds == 1), ("--no-expansion", self.expansion),
                             ("--layer-sampling", not self.layer_sampling), ("--resources", not self.resources),
                             (f"--fixed-point-bits {self.fixed_point_bits}", self.fixed_point_bits == 16)):
                need(ok, f"{flag}: a FedSpaLLM option; pass --algorithm fedspallm "
                         "(FedPrLLM's own rounds are --strategy iterative)")
            self.method = "wanda" if self.method == "auto" else self.method
            need(not self.sparsegpt_update or self.method == "sparsegpt",
                 f"--sparsegpt-update: only with --method sparsegpt, got --method {self.method}")
            need(not self.sparsegpt_update or self.strategy == "one-shot",
                 "--sparsegpt-update: no effect with --strategy iterative (every client continues from the "
                 "server's masked dense layer); use --strategy one-shot")
            need("random" not in self.baselines, "--baselines random: only with --algorithm fedspallm")
            self.sparsegpt_update = bool(self.sparsegpt_update)
            self.local_group = "row" if self.local_group == "auto" else self.local_group

    def _check_reference(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """--numerics reference: upstream's own protocol."""
        if self.numerics == "reference":  # upstream's own protocol (locuslab/wanda, Pengxin-Guo/FedPrLLM)
            need(self.algorithm == "fedprllm" and self.method == "wanda",
                 f"--numerics reference: reproduces upstream Wanda/FedPrLLM; got --algorithm {self.algorithm} "
                 f"--method {self.method}")
            need(not self.client_data, "--numerics reference: draws the windows from one --calib corpus as upstream's "
                                       "loaders do; not with --client-data")
            need("," not in self.calib, f"--calib {self.calib}: --numerics reference draws the windows from one "
                                        "corpus, as upstream's loaders do")
            need(self.partition == "iid", f"--partition {self.partition}: --numerics reference splits the windows "
                                          "by random.shuffle, as upstream does (iid)")
            need("batch_size" not in explicit or self.batch_size == 1,
                 f"--batch-size {self.batch_size}: --numerics reference runs one window per forward, as upstream")
            self.batch_size = 1

    def _check_fedspallm(self, need: Callable[[bool, str], None], explicit: set[str]) -> None:
        """FedSpaLLM's rounds, fixed point and resources."""
        need(self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}")
        need(1 <= self.fixed_point_bits <= 40, f"--fixed-point-bits must lie in [1, 40], got {self.fixed_point_bits}")
        need(self.fixed_point_bits == 16 or self.secure_agg != "none",
             f"--fixed-point-bits {self.fixed_point_bits}: only used with --secure-agg pairwise or he")
        for r in self.resources:
            need(0.0 < r <= 1.0, f"--resources: each value must lie in (0, 1] (fraction of layers), got {r}")
        need(not self.resources or self.layer_sampling, "--resources: only used with --layer-sampling")
        need(len(self.resources) in (0, 1, self.clients),
             f"--resources: expected 1 value or one per client ({self.clients}), got {len(self.resources)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _check_type(name: str, typ: str, value):
    """A TOML value checked against the field's declared type; returns it (ints accepted for floats)."""
    def bad(expected: str):
        return UsageError(f"--config: {name} = {value!r}: expected {expected}")

    base = typ.replace(" | None", "")
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise bad("a string")
    elif base.startswith("list["):
        inner = base[5:-1]
        if not isinstance(value, list):
            raise bad(f"a list of {'strings' if inner == 'str' else 'numbers'}")
        value = [_check_type(name, inner, v) for v in value]
    return value


def load_toml(path: str | Path) -> dict:
    """The ``[prune]`` table of a TOML file (or its top level), every key and type checked."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config: {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config: {p} is not valid TOML ({exc})") from None
    data = data.get("prune", data)
    types = {f.name: str(f.type) for f in fields(PruneConfig)}
    unknown = set(data) - set(types)
    if unknown:
        raise UsageError(f"--config: unknown keys {sorted(unknown)} in {p}")
    return {k: _check_type(k, types[k], v) for k, v in data.items()}


def config_from(values: dict, explicit: set[str]) -> PruneConfig:
    """A config from checked ``values``; ``explicit`` names what the user set (to catch contradictions)."""
    cfg = PruneConfig(**values)
    cfg._explicit = set(explicit)  # type: ignore[attr-defined]
    return cfg
