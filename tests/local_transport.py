"""An in-process transport: every node's handler called directly, contents round-tripped through Flower's
records as they would be on the wire. For the protocol tests without processes; the Deployment Engine runs
the very same handlers in ``flwr-clientapp`` processes (tests/test_flower_deployment.py)."""

from __future__ import annotations

from secprune.flower.client_app import handle
from secprune.flower.records import from_record, to_record


class LocalTransport:
    """Nodes ``100 + i`` with node configs ``node_configs[i]``; ``drop[node] = stage`` silences a node from
    that stage on (a SuperNode that stopped)."""

    def __init__(self, run_config: dict, node_configs: list[dict], *, run_id: int = 1) -> None:
        self.run_config, self.node_configs, self.run_id = run_config, node_configs, run_id
        self.drop: dict[int, str] = {}
        self.stages: list[str] = []

    def nodes(self, *, expected: int, wait: float) -> list[int]:
        return [100 + i for i in range(len(self.node_configs))]

    def exchange(self, stage: str, contents: dict[int, dict], *, timeout: float) -> dict[int, dict]:
        self.stages.append(stage)
        out: dict[int, dict] = {}
        for node, content in contents.items():
            if node in self.drop and self.stages.count(self.drop[node]) > 0:
                continue
            try:
                reply = handle(stage, from_record(to_record(content)), run_config=self.run_config,
                               node_config=self.node_configs[node - 100], run_id=self.run_id)
            except Exception as exc:  # a client refusing a stage answers with an error
                out[node] = exc
                continue
            out[node] = from_record(to_record(reply))
        return out
