"""Secure-aggregation parameters derived from a stated threat: colluders, dropouts and a failure probability.

Every party states what it must survive as a :class:`Threat`: ``c`` clients that collude with the server
(they hand it their keys and shares and may deviate), a budget of ``d`` clients that drop out, at least
``m`` clients behind every released sum, and failure probabilities 2^-sigma (a privacy failure) and 2^-eta
(an abort because too many of one client's neighbours dropped).  :func:`pairwise_parameters` derives the
neighbour degree k and the threshold t from it, in the manner of Bell et al. (CCS 2020, Sec. 3-4: conditions
per client on a random graph, a union bound over the clients and over the graphs the server can draw), for
our graph: the Harary graph H(k, n) on a ring whose order comes from randomness the server cannot choose
(the clients' committed nonces, :mod:`secprune.secagg.pairwise_client`).

Pairwise, for an honest client v with h share holders (itself and its k neighbours) of which c_v collude:

* **No split of share kinds.** Each honest holder reveals, per owner and epoch, a share of b_v or of s_v,
  never both; colluders reveal both and v reveals its own b-share.  A server that tells some holders "v
  survived" and others "v dropped" collects at most (h - c_v) + 2 c_v shares, so 2t > h + c_v keeps it from t
  of each kind.
* **No cut.** A server that fakes the dropout of every client on two arcs of k/2 consecutive ring positions
  splits the survivors into two components and could decode each sum on its own.  The client next to such a
  gap keeps at most 1 + k/2 + (its colluding neighbours) live holders, so with t >= k/2 + 2 + c_v its self
  mask can never be removed (and it refuses to sign the survivor set): only sums over one connected set can
  come out (Bonawitz et al., CCS 2017, Sec. 4; the bound k/2 + 2 without colluders is the earlier one).
* **Liveness.** A survivor needs t live holders: t <= h - d_v for d_v dropped neighbours.

c_v and d_v are hypergeometric (k neighbours drawn from the n - 1 other clients, c resp. d of them
colluding resp. dropping); we take the smallest c*, d* exceeded with probability at most 2^-sigma /
(n (redraws + 1)) resp. 2^-eta / n per client, so that over every client and every graph the server may
draw (one per session, at most ``redraws`` abandoned ones, :mod:`secprune.secagg.ledger`) the conditions fail
with probability <= 2^-sigma resp. 2^-eta.  Then t >= max(k/2 + 2 + c*, m) (which also gives 2t > h + c*) and
t <= h - d*.  The complete graph needs no randomness: t > (n + c)/2, t >= m and t <= n - d.  We take the
smallest degree that meets the conditions, and the complete graph whenever that degree is not below
(n - 1) / 2 (half the masks saved at most, for less dropout tolerance), with the smallest safe t (the
largest dropout tolerance, h - t).

HE: the key holder decrypts only sums of at least t distinct signed uploads, t >= m and t > n/2.

Every released sum covers at least m >= max(3, c + 2) clients (default c + 3: three honest ones even if
all c colluders are among the contributors), so no sum reveals one client's input to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

__all__ = ["MIN_DEGREE", "MIN_CONTRIBUTORS", "DEFAULT_COLLUDERS", "DEFAULT_DROPOUTS", "Threat", "threat", "count_of",
           "complete_bounds", "sparse_bounds", "pairwise_parameters", "check_pairwise", "he_threshold",
           "check_options"]

MIN_DEGREE = 4
MIN_CONTRIBUTORS = 3
DEFAULT_COLLUDERS = "1/3"
DEFAULT_DROPOUTS = "1/10"


@dataclass(frozen=True)
class Threat:
    """What a party requires every session to survive (absolute counts, for a federation of ``n_clients``)."""

    n_clients: int
    colluders: int
    dropouts: int
    min_contributors: int
    sigma: int = 40
    eta: int = 30
    redraws: int = 16

    def describe(self) -> str:
        return (f"{self.colluders} colluding and {self.dropouts} dropping of {self.n_clients} clients, "
                f">= {self.min_contributors} contributors per sum, failure <= 2^-{self.sigma}")

    def as_dict(self) -> dict:
        return {"clients": self.n_clients, "colluders": self.colluders, "dropouts": self.dropouts,
                "min_contributors": self.min_contributors, "sigma": self.sigma, "eta": self.eta,
                "redraws": self.redraws}


def count_of(value: int | float | str | None, *, n_clients: int, default: str, flag: str) -> int:
    """A count of clients from a count (``5``) or a fraction of ``n_clients`` (``0.25``, ``"1/3"``), floored."""
    raw = default if value is None else value
    try:
        if isinstance(raw, bool):
            raise ValueError
        if isinstance(raw, int):
            frac = None
            count = raw
        else:
            text = str(raw).strip()
            if "/" in text or "." in text or "e" in text.lower():
                frac = Fraction(text).limit_denominator(10**6) if "/" in text else Fraction(float(text))
                count = None
            else:
                frac, count = None, int(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{flag} {raw!r}: expected a count (e.g. 5) or a fraction of the clients (e.g. 1/3, "
                         f"0.25)") from None
    if frac is not None:
        if not 0 <= frac < 1:
            raise ValueError(f"{flag} {raw}: a fraction must lie in [0, 1)")
        count = math.floor(frac * n_clients)
    if count < 0 or count >= max(n_clients, 1):
        raise ValueError(f"{flag} {raw}: expected 0..{max(n_clients - 1, 0)} of the {n_clients} clients")
    return count


def threat(n_clients: int, *, colluders: int | float | str | None = None, dropouts: int | float | str | None = None,
           min_contributors: int | None = None, sigma: int = 40, eta: int = 30, redraws: int = 16,
           flag_prefix: str = "--secagg-") -> Threat:
    """The :class:`Threat` of a federation of ``n_clients`` from counts or fractions (defaults: 1/3 colluders,
    1/10 dropouts, c + 3 contributors); raises ``ValueError`` naming the flag."""
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    c = count_of(colluders, n_clients=n_clients, default=DEFAULT_COLLUDERS, flag=f"{flag_prefix}colluders")
    d = count_of(dropouts, n_clients=n_clients, default=DEFAULT_DROPOUTS, flag=f"{flag_prefix}dropouts")
    floor = max(MIN_CONTRIBUTORS, c + 2)
    m = c + 3 if min_contributors is None else min_contributors
    if isinstance(m, bool) or not isinstance(m, int) or m < floor:
        raise ValueError(f"{flag_prefix}min-contributors {m}: below the safe level {floor} (at least 3, and at least "
                         f"two honest clients beside {c} colluders)")
    if not 8 <= sigma <= 128 or not 4 <= eta <= 128 or not 0 <= redraws <= 1 << 20:
        raise ValueError("threat: sigma in 8..128, eta in 4..128, redraws in 0..2^20")
    return Threat(n_clients=n_clients, colluders=c, dropouts=d, min_contributors=m, sigma=sigma, eta=eta,
                  redraws=redraws)


@lru_cache(maxsize=4096)
def _quantile(others: int, marked: int, draws: int, log2_p: float) -> int:
    """Smallest x with P[X > x] <= 2^log2_p for X ~ Hypergeometric(others, marked, draws) (marked clients
    among the ``draws`` neighbours drawn from ``others``)."""
    from scipy.stats import hypergeom

    top = min(marked, draws)
    for x in range(top + 1):
        if x == top or hypergeom.sf(x, others, marked, draws) <= 2.0 ** log2_p:
            return x
    return top


def complete_bounds(n_clients: int, threat: Threat) -> tuple[int, int]:
    """(smallest safe t, largest t that tolerates the dropout budget) on the complete graph."""
    c = min(threat.colluders, n_clients)
    return max((n_clients + c) // 2 + 1, threat.min_contributors), n_clients - threat.dropouts


def sparse_bounds(n_clients: int, degree: int, threat: Threat) -> tuple[int, int]:
    """(smallest safe t, largest t that tolerates the dropout budget) on H(degree, n_clients) (module doc)."""
    others = n_clients - 1
    colluders = min(threat.colluders, others)
    security = -threat.sigma - math.log2(max(n_clients, 2)) - math.log2(threat.redraws + 1)
    c_star = _quantile(others, colluders, degree, security)
    d_star = _quantile(others, min(threat.dropouts, others), degree, -threat.eta - math.log2(max(n_clients, 2)))
    return max(degree // 2 + 2 + c_star, threat.min_contributors), degree + 1 - d_star


def _derived_degree(n_clients: int, threat: Threat) -> int | None:
    for k in range(MIN_DEGREE, n_clients - 1, 2):
        if 2 * k >= n_clients - 1:
            return None  # not worth it: the complete graph, more dropout tolerance
        low, high = sparse_bounds(n_clients, k, threat)
        if low <= high:
            return k
    return None


def _degree(n_clients: int, neighbours: int | None, flag: str) -> int | None:
    """A given sparse degree k, or None for the complete graph (k >= n - 1)."""
    if isinstance(neighbours, bool) or not isinstance(neighbours, int):
        raise ValueError(f"{flag} {neighbours!r}: expected an integer (0 = derived from the threat)")
    if neighbours < 0:
        raise ValueError(f"{flag} {neighbours}: expected a degree >= {MIN_DEGREE}, or 0 to derive it")
    if neighbours >= n_clients - 1:
        return None
    if neighbours < MIN_DEGREE or neighbours % 2:
        raise ValueError(f"{flag} {neighbours}: below the safe level: a sparse graph needs an even degree "
                         f">= {MIN_DEGREE} (or n-1 = {n_clients - 1} for the complete graph); see docs/secagg.md")
    return neighbours


def pairwise_parameters(*, n_clients: int, threat: Threat, neighbours: int | None = None,
                        threshold: int | None = None, flag_prefix: str = "--secagg-") -> tuple[int | None, int]:
    """(degree k or None for the complete graph, threshold t) for ``n_clients`` under ``threat``.

    ``neighbours`` None or 0 derives k (module doc); a given k or t is checked against the same conditions.
    Raises ``ValueError`` naming the flag and the condition that fails.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if n_clients < threat.min_contributors:
        raise ValueError(f"{flag_prefix}min-contributors {threat.min_contributors}: {n_clients} clients cannot "
                         f"release a sum over {threat.min_contributors} ({threat.describe()}); use more clients "
                         f"or lower {flag_prefix}colluders")
    if neighbours:
        degree = _degree(n_clients, neighbours, f"{flag_prefix}neighbours")
    else:
        degree = _derived_degree(n_clients, threat)
    holders = n_clients if degree is None else degree + 1
    low, high = complete_bounds(n_clients, threat) if degree is None else sparse_bounds(n_clients, degree, threat)
    graph = "the complete graph" if degree is None else f"degree {degree}"
    if low > holders or low > high:
        raise ValueError(f"{flag_prefix}{'neighbours' if neighbours else 'colluders'}: no safe threshold on "
                         f"{graph} for {threat.describe()} (needs {low} <= t <= {min(high, holders)}); "
                         f"{'raise the degree, ' if degree is not None else ''}lower {flag_prefix}colluders or "
                         f"{flag_prefix}dropouts, or add clients; see docs/secagg.md")
    if threshold is None:
        return degree, low
    flag = f"{flag_prefix}threshold {threshold}"
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"{flag}: expected an integer")
    if threshold > holders:
        raise ValueError(f"{flag}: above the {holders} share holders per client")
    if threshold < low:
        raise ValueError(f"{flag}: below the safe level {low} on {graph} for {threat.describe()}; "
                         f"see docs/secagg.md")
    if threshold > high:
        raise ValueError(f"{flag}: above {high}, so {threat.dropouts} dropouts could abort every sum; lower "
                         f"{flag_prefix}dropouts or the threshold")
    return degree, threshold


def check_pairwise(*, n_clients: int, degree: int | None, threshold: int, min_contributors: int,
                   threat: Threat) -> None:
    """A client's check of a session it is asked to join: the server's k, t and m must meet the client's own
    threat (security only; the dropout budget is the server's concern).  Raises ``ValueError``."""
    if min_contributors < threat.min_contributors:
        raise ValueError(f"at least {min_contributors} contributors per sum, below this client's "
                         f"{threat.min_contributors}")
    if n_clients < threat.min_contributors:
        raise ValueError(f"{n_clients} clients cannot release a sum over {threat.min_contributors}")
    if degree is None:
        low, holders = complete_bounds(n_clients, threat)[0], n_clients
    else:
        if degree < MIN_DEGREE or degree % 2 or degree >= n_clients - 1:
            raise ValueError(f"degree {degree}: a sparse graph needs an even degree {MIN_DEGREE}..{n_clients - 2}")
        low, holders = sparse_bounds(n_clients, degree, threat)[0], degree + 1
    if not low <= threshold <= holders:
        graph = "the complete graph" if degree is None else f"degree {degree}"
        raise ValueError(f"threshold {threshold} on {graph} of {n_clients} clients is below the safe level {low} "
                         f"for {threat.describe()}")


def he_threshold(*, n_clients: int, threat: Threat, threshold: int | None = None,
                 flag_prefix: str = "--secagg-") -> int:
    """Signed uploads the HE key holder needs before it decrypts: >= m and > n/2 (default the smallest)."""
    low = max(threat.min_contributors, n_clients // 2 + 1)
    if n_clients < threat.min_contributors:
        raise ValueError(f"{flag_prefix}min-contributors {threat.min_contributors}: {n_clients} clients cannot "
                         f"release a sum over {threat.min_contributors} ({threat.describe()}); use more clients "
                         f"or lower {flag_prefix}colluders")
    if threshold is None:
        if low > n_clients - threat.dropouts:
            raise ValueError(f"{flag_prefix}dropouts {threat.dropouts}: with {n_clients} clients the key holder "
                             f"needs {low} uploads, so at most {n_clients - low} may drop")
        return low
    flag = f"{flag_prefix}threshold {threshold}"
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"{flag}: expected an integer")
    if threshold > n_clients:
        raise ValueError(f"{flag}: above the {n_clients} clients")
    if threshold < low:
        raise ValueError(f"{flag}: below the safe level {low} (t > n/2 and t >= {threat.min_contributors} "
                         f"contributors) for {n_clients} clients")
    return threshold


def check_options(backend: str, *, n_clients: int, neighbours: int | None = None, threshold: int | None = None,
                  colluders: int | float | str | None = None, dropouts: int | float | str | None = None,
                  min_contributors: int | None = None) -> Threat | None:
    """Validate the CLI's secure-aggregation flags before any work; raises ``ValueError`` naming the flag.

    ``neighbours`` 0 or None means "derive it"; ``threshold`` None means the smallest safe one.  Returns the
    threat (None for ``none``).
    """
    from secprune.secagg import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"--secure-agg {backend}: unknown backend; expected one of {', '.join(BACKENDS)}")
    given_k = neighbours is not None and neighbours != 0
    if backend != "pairwise" and given_k:
        raise ValueError(f"--secagg-neighbours {neighbours}: only --secure-agg pairwise uses a neighbour graph")
    if backend == "none":
        for name, value in (("threshold", threshold), ("colluders", colluders), ("dropouts", dropouts),
                            ("min-contributors", min_contributors)):
            if value is not None:
                raise ValueError(f"--secagg-{name} {value}: --secure-agg none has no secure aggregation")
        return None
    t = threat(n_clients, colluders=colluders, dropouts=dropouts, min_contributors=min_contributors)
    if backend == "pairwise":
        if isinstance(neighbours, int) and not isinstance(neighbours, bool) and neighbours > n_clients - 1:
            raise ValueError(f"--secagg-neighbours {neighbours}: above n-1 = {n_clients - 1} for {n_clients} "
                             f"clients (0 derives the degree)")
        pairwise_parameters(n_clients=n_clients, threat=t, neighbours=neighbours or None, threshold=threshold)
    else:
        he_threshold(n_clients=n_clients, threat=t, threshold=threshold)
    return t
