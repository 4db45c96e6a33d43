"""The Flower ``ServerApp``: :class:`~secprune.flower.driver.ServerRun` over Flower's Grid, then the outputs.

The server's outputs (in the run config's ``out``, written to a temporary folder and renamed on success,
like ``secprune prune``): ``final_mask.safetensors`` (and ``vote_counts.safetensors`` with ``--scaling``,
``global_weights.safetensors`` for FedSpaLLM), keyed by the model's parameter names, so ``secprune export``
works on them; ``summary.json`` (schema ``secprune.summary/1`` with ``"engine": "flower"``) and
``log.json`` (bytes per client and stage, from Flower's serialized messages and from the protocol).
A run that aborts (fewer than t survivors, a client refusing a stage) writes nothing.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

from secprune import log, outdir, summary
from secprune.flower.driver import ServerRun


class GridTransport:
    """The driver's transport over a Flower Grid: one ``query.<stage>`` message per node."""

    def __init__(self, grid) -> None:
        self.grid = grid

    def nodes(self, *, expected: int, wait: float) -> list[int]:
        t0 = time.perf_counter()
        nodes: list[int] = []
        while time.perf_counter() - t0 < wait:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= expected:
                return nodes
            time.sleep(0.5)
        raise RuntimeError(f"{len(nodes)} SuperNodes connected in {wait:.0f} s, expected {expected}")

    def exchange(self, stage: str, contents: dict[int, dict], *, timeout: float) -> dict[int, dict]:
        from flwr.app import Message
        from flwr.common.constant import ErrorCode

        from secprune.flower.records import from_record, to_record

        gone = {ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE,
                ErrorCode.CLIENT_APP_CRASHED}

        messages = [Message(to_record(c), dst_node_id=node, message_type=f"query.{stage}")
                    for node, c in contents.items()]
        out: dict[int, dict] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                if reply.error.code in gone:  # the node stopped: a dropout, not a refusal
                    continue
                out[node] = RuntimeError(reply.error.reason)
            else:
                out[node] = from_record(reply.content)
        return out


def wiretap(path: str):
    """Test aid: every content the server receives, appended to ``path`` (it is what the server knows)."""
    if not path:
        return None

    def record(stage: str, client: int, content: dict) -> None:
        with open(path, "ab") as f:
            pickle.dump({"stage": stage, "client": client, "content": content}, f)
    return record


def write_outputs(run: ServerRun, result: dict, out: Path, *, evaluate: bool) -> dict:
    """The server's results, in the formats of ``secprune prune`` (docs/outputs.md)."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    from secprune.evaluate import build_evals, evaluate_model
    from secprune.fedprllm.aggregate import count_dtype
    from secprune.model import load_model, param_names
    from secprune.run_common import save_final_mask

    cfg, strategy, model = run.cfg, run.strategy, run.model
    names = param_names(model)
    outdir.check_target(out, overwrite=True)
    tmp = outdir.staging(out, kind="flower")
    try:
        files = {"final_mask": "final_mask.safetensors", "summary": "summary.json", "log": "log.json"}
        masks = strategy.final if strategy.name == "fedprllm" else strategy.masks
        save_final_mask(model, masks, tmp)
        if strategy.name == "fedspallm":
            save_file({names[n]: strategy.global_w[n][~strategy.masks[n]].contiguous().cpu() for n in strategy.masks},
                      str(tmp / "global_weights.safetensors"),
                      metadata={"format": "secprune-fedspallm-kept-values-v1"})
            files["global_weights"] = "global_weights.safetensors"
        elif cfg.scaling:
            save_numpy({names[n]: c.numpy().astype(count_dtype(cfg.clients)) for n, c in strategy.counts.items()},
                       str(tmp / "vote_counts.safetensors"), metadata={"format": "secprune-vote-counts-v1",
                                                                       "clients": str(cfg.clients)})
            files["vote_counts"] = "vote_counts.safetensors"
        results: dict = {}
        if evaluate and cfg.eval:
            tok = load_model(cfg.model)[1]
            evals = build_evals(cfg, tok, model.config)
            weights = strategy.global_w if strategy.name == "fedspallm" else None
            scales = {n: strategy.scale(n) for n in masks} if cfg.scaling and strategy.name == "fedprllm" else None
            results["federated"] = evaluate_model(model, evals, masks=None if weights else masks, weights=weights,
                                                  scales=scales, progress=False)
        flower_bytes = result["wire"]["flower_bytes"]
        summ = {
            "algorithm": cfg.algorithm, "engine": "flower", "run_tag": run.extras.get("run-tag", ""),
            "config": cfg.to_dict(),
            "model": summary.model_info(model, cfg.model),
            "calibration": {"clients": cfg.clients, "clients_at_end": result["clients_at_end"]},
            "results": results, "sparsity": summary.mask_sparsity(masks, target=cfg.sparsity),
            "communication": {"flower_bytes_per_client": {c: sum(v.values()) for c, v in flower_bytes.items()},
                              "protocol_bytes_per_client": {c: sum(v.values()) for c, v in
                                                            result["wire"]["protocol_bytes"].items()},
                              "stages": len(result["stages"])},
            "secure_aggregation": {"backend": cfg.secure_agg},
            "time_s": {"total_s": result["seconds"]},
            "peak_memory": summary.peak_memory_mb("cpu"),
            "files": files,
        }
        if hasattr(strategy.method, "guarantee"):  # --dp statistics: what every ClientApp enforces itself
            summ["differential_privacy"] = strategy.method.planned()
        summary.write(tmp, summ, {"stages": result["stages"], "wire": result["wire"],
                                  "step_timing": result["step_timing"]})
        outdir.commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summ


def main(grid, context) -> None:
    from secprune.flower.settings import config_from_run

    cfg, extras = config_from_run(context.run_config)
    out = Path(str(context.run_config.get("out") or "runs/flower")).expanduser()
    run = ServerRun(GridTransport(grid), cfg, extras, on_received=wiretap(str(extras.get("wiretap", ""))))
    result = run.run()
    summ = write_outputs(run, result, out, evaluate=bool(extras.get("evaluate")))
    log.info(f"secprune flower run: {out} ({result['seconds']:.1f} s)")
    print(json.dumps({"out": str(out), "sparsity": summ["sparsity"]["mask"], "results": summ["results"]},
                     default=float))


def _flower_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(main)
    return app


try:
    app = _flower_app()
except ImportError:  # pragma: no cover - without the flower extra
    app = None

__all__ = ["GridTransport", "app", "main", "write_outputs"]
