"""Safe parameters (check_options, the CLI's validation), identities and the pinned key directory."""

from __future__ import annotations

import pytest

from secprune.secagg import check_options, make_summer
from secprune.secagg.identity import IdentityKey, KeyDirectory, generate_identities, load_identities
from secprune.secagg.messages import KEY_HOLDER
from secprune.secagg.params import default_threshold, min_threshold, pairwise_parameters


@pytest.mark.parametrize("backend, kw", [
    ("pairwise", {}), ("pairwise", {"neighbours": 0}), ("pairwise", {"neighbours": 4}), ("pairwise", {"neighbours": 8}),
    ("pairwise", {"neighbours": "log"}), ("pairwise", {"neighbours": 63}), ("pairwise", {"threshold": 33}),
    ("pairwise", {"neighbours": 8, "threshold": 6}), ("pairwise", {"neighbours": 8, "threshold": 9}),
    ("he", {}), ("he", {"threshold": 40}), ("none", {}), ("none", {"neighbours": 0}),
])
def test_safe_options_pass(backend, kw):
    check_options(backend, n_clients=64, **kw)


@pytest.mark.parametrize("backend, kw, match", [
    ("pairwise", {"neighbours": 1}, r"--secagg-neighbours 1: below the safe level"),  # perfect matching
    ("pairwise", {"neighbours": 2}, r"--secagg-neighbours 2: below the safe level"),
    ("pairwise", {"neighbours": 5}, r"--secagg-neighbours 5: below the safe level.*even"),
    ("pairwise", {"neighbours": -3}, r"--secagg-neighbours -3"),
    ("pairwise", {"neighbours": 64}, r"--secagg-neighbours 64: above n-1 = 63"),
    ("pairwise", {"threshold": 32}, r"--secagg-threshold 32: below the safe level 33"),  # 2t > n
    ("pairwise", {"threshold": 65}, r"--secagg-threshold 65: above the 64 share holders"),
    ("pairwise", {"neighbours": 8, "threshold": 5}, r"--secagg-threshold 5: below the safe level 6.*k/2 \+ 2"),
    ("pairwise", {"neighbours": 8, "threshold": 10}, r"--secagg-threshold 10: above the 9 share holders"),
    ("he", {"neighbours": 8}, r"--secagg-neighbours 8: only --secure-agg pairwise"),
    ("he", {"threshold": 32}, r"--secagg-threshold 32: below the safe level 33"),
    ("he", {"threshold": 65}, r"--secagg-threshold 65: above the 64 clients"),
    ("none", {"threshold": 3}, r"--secagg-threshold 3: --secure-agg none has no threshold"),
    ("none", {"neighbours": 8}, r"--secagg-neighbours 8: only --secure-agg pairwise"),
    ("rsa", {}, r"--secure-agg rsa: unknown backend"),
])
def test_unsafe_or_misplaced_options_name_the_flag(backend, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        check_options(backend, n_clients=64, **kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kw", [{"neighbours": 1}, {"neighbours": 3}, {"neighbours": 8, "threshold": 5},
                                {"threshold": 4}])
def test_summers_refuse_unsafe_parameters_too(kw):
    with pytest.raises(ValueError, match="below the safe level"):
        make_summer("pairwise", n_clients=8 if "neighbours" not in kw else 64, **kw)
    with pytest.raises(ValueError, match="below the safe level"):
        make_summer("he", n_clients=8, threshold=4)


def test_default_thresholds_meet_the_safe_levels():
    for n in range(1, 80):
        for k in [None, *range(4, n - 1, 2)]:
            degree, t = pairwise_parameters(n_clients=n, neighbours=k, threshold=None)
            h = n if degree is None else degree + 1
            assert t == max(default_threshold(h), min_threshold(holders=h, degree=degree))
            assert 2 * t > h and t <= h and (degree is None or t >= degree // 2 + 2)
    # a sub-federation smaller than the degree uses the complete graph (FedSpaLLM's sampled layers)
    assert pairwise_parameters(n_clients=3, neighbours=8, threshold=None) == (None, 2)


def test_identity_files_roundtrip_and_signed_directory(tmp_path):
    directory = generate_identities(tmp_path / "keys", n_clients=3, key_holder=True)
    assert (tmp_path / "keys" / "client0.pem").stat().st_mode & 0o077 == 0  # private keys: owner only
    loaded, identities = load_identities(tmp_path / "keys")
    assert loaded.digest == directory.digest and set(identities) == {0, 1, 2, KEY_HOLDER}
    assert loaded.verify(1, b"hello", identities[1].sign(b"hello"))
    assert not loaded.verify(1, b"hello", identities[2].sign(b"hello"))  # another client's key
    assert not loaded.verify(7, b"hello", identities[1].sign(b"hello"))  # an unknown party

    authority = IdentityKey.generate()
    directory.signed_by(authority).save(tmp_path / "signed.json")
    assert KeyDirectory.load(tmp_path / "signed.json", authority=authority.public).digest == directory.digest
    with pytest.raises(ValueError, match="not signed by the expected authority"):
        KeyDirectory.load(tmp_path / "signed.json", authority=IdentityKey.generate().public)
    text = (tmp_path / "signed.json").read_text()
    first_key = loaded.keys[0].hex()
    (tmp_path / "signed.json").write_text(text.replace(first_key, IdentityKey.generate().public.hex()))
    with pytest.raises(ValueError, match="does not verify"):  # a substituted key breaks the signature
        KeyDirectory.load(tmp_path / "signed.json", authority=authority.public)
    with pytest.raises(ValueError, match="0..n-1"):
        KeyDirectory({0: directory.keys[0], 2: directory.keys[1]})


def test_summer_uses_identity_files(tmp_path):
    import numpy as np

    generate_identities(tmp_path, n_clients=4)
    summer = make_summer("pairwise", n_clients=4, key_dir=tmp_path)
    vectors = [np.ones(10, np.uint8)] * 4
    assert (summer.sum("a", vectors) == 4).all()
    with pytest.raises(ValueError, match="key_dir"):
        make_summer("pairwise", n_clients=5, key_dir=tmp_path)
