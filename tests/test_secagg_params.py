"""Parameters from the stated threat (colluders, dropouts, contributors), the CLI's validation, identities and the
pinned, authority-signed key directory."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from secprune.secagg import check_options, make_summer
from secprune.secagg.identity import IdentityKey, KeyDirectory, generate_identities, load_identities
from secprune.secagg.messages import KEY_HOLDER
from secprune.secagg.params import complete_bounds, he_threshold, pairwise_parameters, sparse_bounds, threat


def _tail(others: int, marked: int, draws: int, x: int) -> Fraction:
    """P[X > x] for X ~ Hypergeometric, exactly, from binomial coefficients (independent of scipy)."""
    total = math.comb(others, draws)
    return Fraction(sum(math.comb(marked, j) * math.comb(others - marked, draws - j)
                        for j in range(x + 1, min(marked, draws) + 1)), total)


def _quantile(others: int, marked: int, draws: int, p: Fraction) -> int:
    top = min(marked, draws)
    return next(x for x in range(top + 1) if x == top or _tail(others, marked, draws, x) <= p)


@pytest.mark.parametrize("n, colluders, dropouts", [
    (16, None, None), (64, None, None), (5, None, None), (8, 1, 1), (40, 0, "1/10"), (64, "0.05", "0.05"),
    (200, "0.05", "0.05"), (300, 6, 15),
])
def test_derived_parameters_meet_every_condition(n, colluders, dropouts):
    """The derived (k, t) against the conditions of params.py, recomputed with exact binomial sums: on the
    complete graph 2t > n + c, t >= m and t <= n - d; on H(k, n) the cut / split-view condition t >= k/2 + 2 + c*
    and t <= h - d*, with c*, d* the per-client quantiles of the union bound over clients and graph draws."""
    th = threat(n, colluders=colluders, dropouts=dropouts)
    degree, t = pairwise_parameters(n_clients=n, threat=th)
    c, d, m = th.colluders, th.dropouts, th.min_contributors
    assert t >= m >= max(3, c + 2)
    if degree is None:
        assert 2 * t > n + c and t <= n - d
        assert t == max((n + c) // 2 + 1, m)  # the smallest safe one: the most dropouts tolerated
    else:
        assert degree % 2 == 0 and 4 <= degree and 2 * degree < n - 1
        security = Fraction(1, 2**th.sigma) / (n * (th.redraws + 1))
        c_star = _quantile(n - 1, c, degree, security)
        d_star = _quantile(n - 1, d, degree, Fraction(1, 2**th.eta) / n)
        assert t == max(degree // 2 + 2 + c_star, m) and t <= degree + 1 - d_star
        assert 2 * t > degree + 1 + c_star  # no split of share kinds with c* colluding holders
        for k in range(4, degree, 2):  # no smaller degree would do
            low, high = sparse_bounds(n, k, th)
            assert low > high


def test_defaults_tolerate_a_third_of_the_clients_colluding():
    """At the defaults (1/3 colluders) the graph is complete: 16 clients -> t = 11, 5 colluders, 5 dropouts."""
    th = threat(16)
    assert (th.colluders, th.dropouts, th.min_contributors) == (5, 1, 8)
    assert pairwise_parameters(n_clients=16, threat=th) == (None, 11)
    assert complete_bounds(16, th) == (11, 15)
    assert he_threshold(n_clients=16, threat=th) == 9
    assert pairwise_parameters(n_clients=64, threat=threat(64)) == (None, 43)
    # with few colluders a sparse graph pays off: 1000 clients, 5 % colluding, 10 % dropping
    degree, t = pairwise_parameters(n_clients=1000, threat=threat(1000, colluders="0.05", dropouts="0.1"))
    assert degree is not None and degree < 200 and t > degree // 2 + 2


@pytest.mark.parametrize("value, n, want", [("1/3", 16, 5), ("0.25", 16, 4), (0.25, 16, 4), (3, 16, 3), ("0", 9, 0),
                                            ("2/3", 9, 6)])
def test_colluders_as_a_count_or_a_fraction(value, n, want):
    assert threat(n, colluders=value, min_contributors=max(3, want + 2)).colluders == want


@pytest.mark.parametrize("kw, match", [
    ({"colluders": "abc"}, r"--secagg-colluders 'abc': expected a count"),
    ({"colluders": "1.5"}, r"--secagg-colluders 1.5: a fraction must lie in \[0, 1\)"),
    ({"colluders": 16}, r"--secagg-colluders 16: expected 0..15"),
    ({"dropouts": -1}, r"--secagg-dropouts -1"),
    ({"colluders": 2, "min_contributors": 3}, r"--secagg-min-contributors 3: below the safe level 4"),
])
def test_bad_threats_name_the_flag(kw, match):
    with pytest.raises(ValueError, match=match) as info:
        threat(16, **kw)
    assert "\n" not in str(info.value)


def test_no_sum_over_fewer_than_three_clients():
    """n = 2, and n = 3 with a dropout, would release a two-client sum: each learns the other's input."""
    for backend in ("pairwise", "he"):
        with pytest.raises(ValueError, match="2 clients cannot release a sum over 3"):
            make_summer(backend, n_clients=2, colluders=0)
        with pytest.raises(ValueError, match="3 clients cannot release a sum over 4"):
            make_summer(backend, n_clients=3)  # one colluder of three (the default third): 4 contributors needed
    summer = make_summer("pairwise", n_clients=3, colluders=0, dropout_budget=0)
    assert summer.threshold == 3
    vectors = [np.ones(8, np.uint8) * (i % 2) for i in range(3)]
    from secprune.secagg.errors import SecAggAbortError

    dropping = make_summer("pairwise", n_clients=3, colluders=0, dropout_budget=0, dropouts={"upload": [2]})
    with pytest.raises(SecAggAbortError, match="fewer than the threshold t=3 or the 3 contributors"):
        dropping.sum("m", vectors)
    he = make_summer("he", n_clients=3, colluders=0, dropout_budget=0, dropouts={"upload": [2]})
    with pytest.raises(SecAggAbortError, match="fewer than t=3"):
        he.sum("m", vectors)


@pytest.mark.parametrize("backend, kw", [
    ("pairwise", {}), ("pairwise", {"neighbours": 0}), ("pairwise", {"neighbours": 63}),
    ("pairwise", {"threshold": 50}), ("pairwise", {"colluders": "0.05", "neighbours": 32}),
    ("pairwise", {"colluders": 0, "dropouts": 2, "neighbours": 8, "threshold": 7}),
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
    ("pairwise", {"neighbours": 8}, r"--secagg-neighbours: no safe threshold on degree 8 for 21 colluding"),
    ("pairwise", {"threshold": 42}, r"--secagg-threshold 42: below the safe level 43"),  # 2t > n + c
    ("pairwise", {"threshold": 65}, r"--secagg-threshold 65: above the 64 share holders"),
    ("pairwise", {"threshold": 64}, r"--secagg-threshold 64: above 58, so 6 dropouts"),
    ("pairwise", {"colluders": 0, "dropouts": 2, "neighbours": 8, "threshold": 5},
     r"--secagg-threshold 5: below the safe level 6"),
    ("pairwise", {"colluders": "0.4", "dropouts": "0.4"}, r"--secagg-colluders: no safe threshold on the complete"),
    ("he", {"neighbours": 8}, r"--secagg-neighbours 8: only --secure-agg pairwise"),
    ("he", {"threshold": 32}, r"--secagg-threshold 32: below the safe level 33"),
    ("he", {"threshold": 65}, r"--secagg-threshold 65: above the 64 clients"),
    ("none", {"threshold": 3}, r"--secagg-threshold 3: --secure-agg none has no secure aggregation"),
    ("none", {"colluders": 3}, r"--secagg-colluders 3: --secure-agg none"),
    ("none", {"neighbours": 8}, r"--secagg-neighbours 8: only --secure-agg pairwise"),
    ("rsa", {}, r"--secure-agg rsa: unknown backend"),
])
def test_unsafe_or_misplaced_options_name_the_flag(backend, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        check_options(backend, n_clients=64, **kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kw", [{"neighbours": 1}, {"neighbours": 3}, {"threshold": 4},
                                {"neighbours": 8, "threshold": 5, "colluders": 0, "dropout_budget": 2}])
def test_summers_refuse_unsafe_parameters_too(kw):
    with pytest.raises(ValueError, match="below the safe level"):
        make_summer("pairwise", n_clients=8 if "neighbours" not in kw else 64, **kw)
    with pytest.raises(ValueError, match="below the safe level"):
        make_summer("he", n_clients=8, threshold=4)


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


def test_an_authority_pub_beside_the_directory_is_always_checked(tmp_path):
    """`secprune keys` signs the directory and writes authority.pub: a directory whose keys were swapped (by
    whoever delivered the folder) no longer loads, nor one signed by another authority."""
    from secprune.cli import main

    assert main(["keys", "--clients", "4", "--out", str(tmp_path / "k"), "--quiet"]) == 0
    load_identities(tmp_path / "k")  # verifies against k/authority.pub
    path = tmp_path / "k" / "directory.json"
    good = path.read_text()
    victim = KeyDirectory.load(path).keys[2].hex()
    path.write_text(good.replace(victim, IdentityKey.generate().public.hex()))
    with pytest.raises(ValueError, match="does not verify"):
        load_identities(tmp_path / "k")
    rogue = IdentityKey.generate()
    KeyDirectory.load(tmp_path / "k" / "directory.json").signed_by(rogue).save(path)
    with pytest.raises(ValueError, match="not signed by the expected authority"):
        load_identities(tmp_path / "k")
    path.write_text(good)
    assert load_identities(tmp_path / "k")[0].signature is not None


def test_summer_uses_identity_files(tmp_path):
    generate_identities(tmp_path, n_clients=4)
    summer = make_summer("pairwise", n_clients=4, colluders=0, key_dir=tmp_path)
    vectors = [np.ones(10, np.uint8)] * 4
    assert (summer.sum("a", vectors) == 4).all()
    with pytest.raises(ValueError, match="key_dir"):
        make_summer("pairwise", n_clients=5, key_dir=tmp_path)
