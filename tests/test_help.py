"""Help that teaches, --version, and the stdout (JSON result) / stderr (people) split with --quiet."""

import argparse
import json
from dataclasses import fields

import pytest

from secprune import __version__
from secprune.cli import build_parser, main
from secprune.config import GROUPS, PruneConfig

from .test_cli import SMALL


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"secprune {__version__}"


def test_every_option_of_every_command_has_a_sentence():
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help" and action.help != "==SUPPRESS==":
                assert action.help and len(action.help) > 10, (name, action.option_strings)


def test_prune_help_lists_each_flag_with_default_choices_and_group(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # rich wraps lines; compare on single spaces
    for g in GROUPS:
        assert g.upper() in text.upper()
    for f in fields(PruneConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert text.count("(default:") >= len(fields(PruneConfig))
    assert "0 = the whole test set" in text and "fedprllm" in text and "dirichlet" in text


def test_quiet_prints_only_the_json_result(tiny_folder, client_files, tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(out),
                 "--quiet", "--save-client-masks"]) == 0
    captured = capfd.readouterr()
    assert captured.err == ""  # no bars, no info, no warnings
    assert json.loads(captured.out)["results"]["federated"]["mask_sparsity"] == pytest.approx(0.5)


def test_without_quiet_people_get_stderr_and_stdout_stays_json(tiny_folder, client_files, tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(out),
                 "--save-client-masks", "--baselines"]) == 0
    captured = capfd.readouterr()
    assert "secprune" in captured.err and "warning" in captured.err  # the private-file warning
    assert json.loads(captured.out)["out"] == str(out)


def test_keys_folder_feeds_a_pairwise_run(tiny_folder, federation, tmp_path, capsys):
    import os
    import stat

    from secprune.secagg.identity import load_identities

    keys = tmp_path / "keys"
    assert main(["keys", "--clients", "4", "--out", str(keys), "--quiet"]) == 0
    directory, identities = load_identities(keys)
    assert sorted(identities) == [0, 1, 2, 3] and stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    assert directory.signature is not None and (keys / "authority.pub").is_file()  # signed by a fresh authority
    out = tmp_path / "run"
    files = federation["files"]
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *files, *SMALL, "--baselines",
                 "--secure-agg", "pairwise", "--secagg-colluders", "0", "--secagg-keys", str(keys), "--out", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *files, *SMALL, "--baselines",
                 "--secure-agg", "pairwise", "--secagg-colluders", "0", "--secagg-keys", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r2"),
                 "--quiet"]) == 2
    assert "--secagg-keys" in capsys.readouterr().err
