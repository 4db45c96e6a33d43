"""``--samples-per-client N``: every client holds N windows of its own (FedSpaLLM's protocol, Sec. 5), in the
simulation and at a Flower client that draws its windows alone."""

import numpy as np
import pytest
import torch

from secprune import calibration
from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.model import load_tokenizer


def test_each_client_gets_n_windows_and_nsamples_follows(tiny_folder):
    cfg = PruneConfig(model=str(tiny_folder), clients=4, samples_per_client=3, seqlen=16).validate()
    assert cfg.nsamples == 12
    calib = calibration.build(cfg, load_tokenizer(tiny_folder))
    assert [len(p) for p in calib.parts] == [3, 3, 3, 3]
    assert sorted(np.concatenate(calib.parts).tolist()) == list(range(12))
    # with more clients every client still holds N windows: the total grows, no client starves
    more = PruneConfig(model=str(tiny_folder), clients=8, samples_per_client=3, seqlen=16).validate()
    assert [len(p) for p in calibration.build(more, load_tokenizer(tiny_folder)).parts] == [3] * 8


@pytest.mark.parametrize("kw, needle", [({"nsamples": 10}, "--nsamples 10"), ({"samples_per_client": 0}, ">= 1"),
                                        ({"partition": "dirichlet", "calib": "ptb,brown"}, "--partition dirichlet")])
def test_contradictions_are_refused(kw, needle):
    with pytest.raises(UsageError, match=needle):
        PruneConfig(clients=4, **{"samples_per_client": 3, **kw}).validate()
    assert PruneConfig(clients=4, samples_per_client=3, nsamples=12).validate().nsamples == 12  # consistent


@pytest.mark.parametrize("source", ["client-data", "corpus"])
def test_a_flower_client_draws_exactly_its_simulated_windows(tiny_folder, client_files, tmp_path, source):
    from secprune.flower.node import ClientNode

    extra = {"client_data": client_files} if source == "client-data" else {"clients": 2, "calib": "ptb"}
    cfg = PruneConfig(model=str(tiny_folder), samples_per_client=3, seqlen=16, **extra).validate()
    calib = calibration.build(cfg, load_tokenizer(tiny_folder))
    for c in range(2):
        node_config = {"client-id": c, "state-dir": str(tmp_path / f"s{c}")}
        node_config |= {"data": client_files[c]} if source == "client-data" else {"num-partitions": 2}
        own = ClientNode(cfg=cfg, node_config=node_config, run_id=1).windows()
        assert own.shape == (3, 16)
        assert torch.equal(own, calib.windows[torch.as_tensor(calib.parts[c])])
