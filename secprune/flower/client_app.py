"""The client side of every stage (see :mod:`secprune.flower.driver`), and the Flower ``ClientApp``.

:func:`handle` is plain Python (a content dict in, a content dict out) so that the same code runs in a
Flower ``ClientApp`` (one process per message) and in the in-process transport of the tests. Each call
rebuilds the client from its own files (:class:`~secprune.flower.node.ClientNode`): its data, its
identity key and pinned key directory, and its saved protocol state.
"""

from __future__ import annotations

import json

import numpy as np

from secprune.errors import UsageError
from secprune.flower.node import ClientNode, build_strategy, task_from
from secprune.flower.records import pack_vector
from secprune.flower.settings import config_from_run
from secprune.secagg.errors import ProtocolError
from secprune.secagg.session import check_name

STAGES = ("hello", "he_context", "advertise", "reveal", "share", "ack", "open", "step", "consistency", "unmask",
          "he_verify", "he_decrypt", "finish")


def _identities(node: ClientNode):
    from secprune.secagg.identity import load_identities

    if node.keys is None:
        raise UsageError("node config: keys = '<folder>' (its client<i>.pem and directory.json) is needed for "
                         "--secure-agg pairwise and he")
    try:
        return load_identities(node.keys, authority=node.authority)
    except ValueError as exc:  # an unsigned or tampered directory: never the server's to change
        raise UsageError(f"node config: keys: {exc}") from None


def _kind(node: ClientNode, key: str, suffix: str) -> str:
    """The kind named in a content key ``<kind><suffix>``, which must be one the run's strategy submits: the
    server's labels never become file names unchecked."""
    kind = key[:-len(suffix)]
    if kind not in node.kinds():
        raise UsageError(f"stage content names the vector kind {kind!r}; this run submits {sorted(node.kinds())}")
    return kind


def _pairwise(node: ClientNode, kind: str):
    from secprune.secagg.pairwise_client import PairwiseClient

    directory, ids = _identities(node)
    state = node.load(f"pairwise-{kind}.pkl")
    own = {"identity": ids[node.client], "directory": directory, "threat": node.threat(directory.n_clients),
           "ledger": node.ledger()}
    if state is None:
        return PairwiseClient(node.client, **own)
    return PairwiseClient.import_state(state, **own)


def _each_kind(node: ClientNode, content: dict, act, suffix: str = "/msg") -> dict:
    """Run ``act(client, value)`` for every ``<kind><suffix>`` of a pairwise stage; save each client's state.
    ``act`` returns the reply message, or None for none."""
    out = {}
    for key, value in content.items():
        if not key.endswith(suffix):
            continue
        kind = _kind(node, key, suffix)
        client = _pairwise(node, kind)
        reply = act(client, value)
        if reply is not None:
            out[f"{kind}/msg"] = reply
        node.save(f"pairwise-{kind}.pkl", client.export_state())
    return out


def _hello(node: ClientNode, content: dict) -> dict:
    return {"role": node.role, "client": node.client}


def _advertise(node: ClientNode, content: dict) -> dict:
    for key in content:  # a new session: forget an earlier one of the same kind (its inputs stay spent)
        node._path(f"pairwise-{_kind(node, key, '/msg')}.pkl").unlink(missing_ok=True)
    return _each_kind(node, content, lambda c, m: c.join(m))


def _reveal(node: ClientNode, content: dict) -> dict:
    return _each_kind(node, content, lambda c, m: c.reveal(m))


def _share(node: ClientNode, content: dict) -> dict:
    return _each_kind(node, content, lambda c, m: c.share_keys(m))


def _ack(node: ClientNode, content: dict) -> dict:
    def act(client, shares):
        for share in shares:
            client.receive_share(share)
        return client.acknowledge()
    return _each_kind(node, content, act, suffix="/shares")


def _open(node: ClientNode, content: dict) -> dict:
    return _each_kind(node, content, lambda c, m: c.open_shares(m))


def _consistency(node: ClientNode, content: dict) -> dict:
    return _each_kind(node, content, lambda c, m: c.sign_survivors(m))


def _unmask(node: ClientNode, content: dict) -> dict:
    return _each_kind(node, content, lambda c, m: c.unmask(m))


def _step(node: ClientNode, content: dict) -> dict:
    """Prune the tasks of this step on the client's own windows, then upload through the secure sum."""
    import time

    import torch

    t0 = time.perf_counter()
    cfg = node.cfg
    node.model  # noqa: B018 - load it now, to time it apart
    t_load = time.perf_counter()
    strategy = build_strategy(cfg, secure=cfg.secure_agg != "none")
    tasks = [task_from(s) for s in json.loads(content["tasks"])]
    received = {k[9:]: torch.from_numpy(np.array(v)) for k, v in content.items() if k.startswith("received/")}
    broadcast = {k[10:]: torch.from_numpy(np.array(v)) for k, v in content.items() if k.startswith("broadcast/")}
    uploads = node.run_tasks(strategy, tasks, received=received, broadcast=broadcast)
    t_prune = time.perf_counter()
    out: dict = {"uploads": json.dumps(uploads)}
    kinds = strategy.kinds(tasks[0])
    if cfg.secure_agg == "none":  # plaintext: what the server would learn without secure aggregation
        for k in kinds:
            for name in json.loads(content[f"{k.name}/names"]):
                v = np.asarray(node.vector(k.name, check_name(name)))
                out[f"{k.name}/plain/{name}"] = v.astype(np.float64) if k.is_float else pack_vector(v, k.max_value)
    elif cfg.secure_agg == "he":
        from secprune.secagg.he import HEClient, HEConfig

        directory, ids = _identities(node)
        client = HEClient(node.client, content["he/context"], identity=ids[node.client], directory=directory,
                          ledger=node.ledger())
        rules = _rules(node, strategy, tasks)
        for k in kinds:
            for name, values in json.loads(content[f"{k.name}/he"]).items():
                he_cfg = HEConfig.decode(values | {"server_key": bytes.fromhex(values["server_key"])})
                want = rules(k, check_name(name)) if he_cfg.validate else he_cfg.rule
                if he_cfg.rule != want:  # a rule of the server's choosing would be a question about the input
                    raise ProtocolError(f"he round {name}: the server asks for a proof of {he_cfg.rule}, but this "
                                        f"client's strategy gives {want}; refused")
                vector = np.asarray(node.vector(k.name, check_name(name)))
                out[f"{k.name}/he/{name}"] = client.encrypt(he_cfg, vector, name=name)
    else:
        for k in kinds:
            client = _pairwise(node, k.name)
            if f"{k.name}/confirm" in content:  # the session's accepted sharers, before its first upload
                client.confirm(content[f"{k.name}/confirm"])
            epoch = int(content[f"{k.name}/epoch"])
            out[f"{k.name}/masked"] = list(client.upload(
                epoch, lambda name, kind=k.name: np.asarray(node.vector(kind, name))))
            client.prg.release()
            node.save(f"pairwise-{k.name}.pkl", client.export_state())
    node.clear_vectors()
    t_end = time.perf_counter()
    out["timing"] = json.dumps({"model_load_s": t_load - t0, "prune_s": t_prune - t_load, "upload_s": t_end - t_prune})
    return out


def _he_context(node: ClientNode, content: dict) -> dict:
    """The key holder makes its BFV keys (kept on its own disk) and signs the public context."""
    from secprune.secagg.he import KeyHolder
    from secprune.secagg.messages import KEY_HOLDER
    from secprune.secagg.params import he_threshold

    directory, ids = _identities(node)
    if KEY_HOLDER not in ids:
        raise UsageError("node config: the key holder's keys folder has no keyholder.pem (secprune keys --key-holder)")
    threat = node.threat(directory.n_clients)  # the key holder's own, not the server's
    threshold = he_threshold(n_clients=directory.n_clients, threat=threat, threshold=node.cfg.secagg_threshold)
    holder = KeyHolder(identity=ids[KEY_HOLDER], directory=directory, threshold=threshold, threat=threat)
    node.save("keyholder.pkl", holder.export_state())
    return {"context": holder.public_context(), "plain_modulus": holder.plain_modulus,
            "poly_modulus_degree": holder.poly_modulus_degree}


def _rules(node: ClientNode, strategy, tasks):
    """(kind, matrix name) -> the rule this client's own strategy says its input satisfies."""
    from secprune.model import decoder_layers, prunable_linears
    from secprune.secagg.he_validation import Rule

    by_layer = {t.layer: t for t in tasks}
    layers = decoder_layers(node.model)

    def rule(kind, name: str):
        _, layer, matrix = name.split(".", 2)
        task = by_layer.get(int(layer)) if layer.isdigit() else None
        linears = prunable_linears(layers[int(layer)]) if task is not None and int(layer) < len(layers) else {}
        if matrix not in linears:
            raise ProtocolError(f"he round {name}: not a matrix of this step")
        return Rule.decode(strategy.input_rule(task, kind, tuple(linears[matrix].weight.shape)))
    return rule


def _key_holder(node: ClientNode):
    from secprune.secagg.he import KeyHolder
    from secprune.secagg.messages import KEY_HOLDER

    directory, ids = _identities(node)
    return KeyHolder.import_state(node.load("keyholder.pkl"), identity=ids[KEY_HOLDER], directory=directory)


def _he_rounds(content: dict):
    """(key prefix, round config) of every round in a key-holder message."""
    from secprune.secagg.he import HEConfig

    for key in content:
        if key.endswith("/cfg"):
            values = json.loads(content[key])
            yield key[:-4], HEConfig.decode(values | {"server_key": bytes.fromhex(values["server_key"])})


def _he_verify(node: ClientNode, content: dict) -> dict:
    """The key holder's share of each forwarded upload's input checks (the uploads wait, on its own disk, for
    the server's share)."""
    holder = _key_holder(node)
    out = {}
    for prefix, cfg in _he_rounds(content):
        if not cfg.validate:
            raise ProtocolError(f"key holder: {prefix}: checks asked for a round without input validation")
        out[f"{prefix}/verify"] = [holder.receive_upload(cfg, forward) for forward in content[f"{prefix}/uploads"]]
    node.save("keyholder.pkl", holder.export_state())
    return out


def _he_decrypt(node: ClientNode, content: dict) -> dict:
    """Add the uploads whose checks both shares passed (or, without validation, the forwarded signed uploads)
    and decrypt their sum, if the key holder's checks pass."""
    holder = _key_holder(node)
    out = {}
    for prefix, cfg in _he_rounds(content):
        if cfg.validate:
            for decision in content.get(f"{prefix}/decisions", []):
                holder.receive_decision(cfg, decision)
        else:
            for forward in content.get(f"{prefix}/uploads", []):
                holder.receive_upload(cfg, forward)
        out[f"{prefix}/result"] = holder.decrypt(cfg, content[f"{prefix}/decrypt"])
    node.save("keyholder.pkl", holder.export_state())
    return out


def _finish(node: ClientNode, content: dict) -> dict:
    node.finish()  # activations, seeds, shares: nothing of the run stays on the node
    return {}


HANDLERS = {"hello": _hello, "he_context": _he_context, "advertise": _advertise, "reveal": _reveal, "share": _share,
            "ack": _ack, "open": _open, "step": _step, "consistency": _consistency, "unmask": _unmask,
            "he_verify": _he_verify, "he_decrypt": _he_decrypt, "finish": _finish}


def handle(stage: str, content: dict, *, run_config, node_config, run_id: int) -> dict:
    """One stage at one node: rebuild the node from its files, act, save, answer.  A stage this node refuses
    ends its part in the run: its state of the run (activations of its text, secrets, vectors) is deleted."""
    cfg, extras = config_from_run(run_config)
    node = ClientNode(cfg=cfg, node_config=node_config, run_id=run_id, run_keys=str(extras.get("keys", "")))
    try:
        return HANDLERS[stage](node, content)
    except BaseException:
        node.finish()
        raise


def _test_hang(stage: str, node_config) -> None:
    """Test aid (`secprune client --test-hang-at STAGE`): stop answering at a stage, as a SuperNode that died."""
    if node_config.get("test-hang-at") != stage:
        return
    import time
    from pathlib import Path

    marker = Path(str(node_config.get("state-dir", "."))) / f"hang-{stage}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("hanging\n")
    time.sleep(3600)


def _flower_app():
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from secprune.flower.records import from_record, to_record

    app = ClientApp()

    def register(stage: str) -> None:
        def handler(msg: Message, context: Context) -> Message:
            _test_hang(stage, context.node_config)
            out = handle(stage, from_record(msg.content), run_config=context.run_config,
                         node_config=context.node_config, run_id=context.run_id)
            return Message(to_record(out), reply_to=msg)
        app.query(stage)(handler)

    for stage in STAGES:
        register(stage)
    return app


try:  # the ClientApp exists when Flower is installed (pip install 'secprune[flower]')
    app = _flower_app()
except ImportError:  # pragma: no cover
    app = None
