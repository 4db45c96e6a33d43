"""Canary exposure of the shared mask (Carlini et al. 2019, "The Secret Sharer"), exact at layer 0.

One client's calibration text gets a canary: a fixed sentence with a random ``length``-digit secret,
repeated ``insertions`` times (it replaces the first tokens of the client's windows). Every candidate
secret is ranked by how well it explains the released view; :mod:`secprune.audits.exposure` turns the
rank of the true secret into exposure in bits.

**Exact and fast.** The inputs of layer 0's q/k/v projections are ``input_layernorm(E[t])``, a function of
the token alone, so a client's Wanda statistic for them is ``S = sum_t a_t^2`` over its tokens: with the
secret's digits as the only unknown, ``S(s) = C + insertions * sum_d n_d(s) a_d^2`` (n_d = how often digit
d occurs in s). Each candidate's exact q/k/v mask follows without running the model, and
:class:`secprune.audits.banded.BandedRowTopK` computes all of them on the few entries where candidates can
differ. (The other layer-0 matrices see attention outputs, which depend on token order; they are not
used here, so these exposures are lower bounds for what the full mask reveals.) Because ``S`` depends on
the digits' multiset only, all permutations of the secret tie; :func:`audits.exposure.max_exposure` is the
ceiling that implies.

**Two adversaries.**
* *Informed* (the DP threat model): knows every other token of every client (everything but the digits).
  It computes each candidate's exact view and scores it by agreement with the observed one: Hamming
  distance for the own mask, the vote sum and the final mask (exact, :class:`BandedFinal`), the exact
  Skellam log-likelihood for the noisy sum.
* *Public prior*: knows the model, the canary template and the number of insertions, not the client's
  other text; it replaces the unknown rest by its public expectation (mean window statistic) and scores
  candidates by the agreement of their masks with the observed view on the entries where candidates
  differ.

The data-free control (magnitude pruning) runs the same code: its masks do not depend on ``S``, so every
candidate ties.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from secprune.audits import exposure as X
from secprune.audits.banded import BandedFinal, BandedRowTopK, sqrt32
from secprune.dp import skellam_noise
from secprune.topk import lowest_k_mask, priority

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
TEMPLATE = " My secret number is {}."


@dataclass
class CanaryBudget:
    length: int = 6  # digits of the secret: |R| = 10^length
    secrets: int = 4  # random secrets per insertion count
    insertions: list[int] = field(default_factory=lambda: [1, 8])
    template: str = TEMPLATE
    skellam_lam: float = 50.0  # noise of the noisy-sum view
    chunk: int = 256  # candidates per batch
    seed: int = 0


def digit_token_ids(tokenizer) -> list[int]:
    """Token id of each digit 0-9 as it appears inside a number (the tokenizer must split digits)."""
    ids = tokenizer("0123456789", add_special_tokens=False).input_ids
    if len(ids) != 10:
        ids2 = tokenizer(" 0123456789", add_special_tokens=False).input_ids[-10:]
        if len(ids2) != 10:
            raise ValueError("the tokenizer does not split numbers into single digits; the exact exposure "
                             "attack needs one token per digit")
        ids = ids2
    return [int(x) for x in ids]


def encode(tokenizer, *, template: str, secret: list[int], digit_ids: list[int]) -> tuple[list[int], list[int]]:
    """(token ids of the canary, positions of the secret's digits in it); checks the digits tokenize alone."""
    text = template.format("".join(str(d) for d in secret))
    ids = [int(x) for x in tokenizer(text, add_special_tokens=False).input_ids]
    want = [digit_ids[d] for d in secret]
    for start in range(len(ids) - len(want) + 1):
        if ids[start:start + len(want)] == want:
            return ids, list(range(start, start + len(want)))
    raise ValueError(f"template {template!r}: the secret's digits do not tokenize as single digit tokens")


def plant(windows: torch.Tensor, canary: list[int], positions: list[int], insertions: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the first ``insertions * len(canary)`` tokens of the client's windows (row-major) by the
    canary repeated; returns (windows, bool of the same shape marking the secret's digit tokens)."""
    flat = windows.reshape(-1).clone()
    reps = torch.tensor(canary * insertions, dtype=flat.dtype)
    if len(reps) > len(flat):
        raise ValueError(f"{insertions} insertions of {len(canary)} tokens do not fit {len(flat)} tokens")
    flat[: len(reps)] = reps
    digit = torch.zeros(len(flat), dtype=torch.bool)
    for r in range(insertions):
        digit[torch.as_tensor(positions) + r * len(canary)] = True
    return flat.view_as(windows), digit.view_as(windows)


def _skellam_logpmf(k: np.ndarray, lam: float) -> np.ndarray:
    from scipy.special import ive

    with np.errstate(divide="ignore"):
        return np.log(ive(np.abs(k), 2 * lam))


def _score_method_masks(method: str, weight: torch.Tensor, sqrt_s: torch.Tensor, prio: torch.Tensor,
                        sparsity: float) -> torch.Tensor:
    score = weight.abs().float() * (sqrt_s.view(1, -1) if method == "wanda" else 1.0)
    return lowest_k_mask(score, sparsity=sparsity, group="row", prio=prio)


def exposure_audit(*, features: torch.Tensor, weights: dict[str, torch.Tensor], client_windows: torch.Tensor,
                   rest_counts: dict[str, torch.Tensor], n_clients: int, mean_window_sq: torch.Tensor,
                   tokenizer, budget: CanaryBudget, method: str = "wanda", sparsity: float = 0.5,
                   seed: int = 0, server_group: str = "layer") -> dict:
    """Exposure of planted canaries in four views (own mask, vote sum, noisy sum, final mask) for the
    informed and the public-prior adversary. ``features`` are a_t = input_layernorm(E[t]) (V, d);
    ``weights`` the public q/k/v weights (short names); ``rest_counts`` the other clients' q/k/v vote
    counts (the real run's); ``mean_window_sq`` the mean public per-window statistic (d,)."""
    if method not in ("wanda", "magnitude"):
        raise ValueError(f"exposure audit supports wanda and magnitude, got {method!r}")
    if server_group != "layer":
        raise ValueError(f"exposure audit: the exact final-mask view supports --server-group layer, got {server_group}")
    rng = np.random.default_rng(budget.seed)
    digit_ids = digit_token_ids(tokenizer)
    counts, mult = X.multisets(length=budget.length)
    space = float(10 ** budget.length)
    a2_digits = features[torch.as_tensor(digit_ids)].double().pow(2)  # (10, d)
    cnt_t = torch.from_numpy(counts).double()
    prio = {n: priority(shape=tuple(w.shape), group="row", seed=seed, tag=f"local:0.{n}") for n, w in weights.items()}
    sprio = {n: priority(shape=tuple(w.shape), group=server_group, seed=seed, tag=f"server:layers.0.{n}")
             for n, w in weights.items()}
    k_win, seqlen = client_windows.shape
    probe, _ = encode(tokenizer, template=budget.template, secret=[0] * budget.length, digit_ids=digit_ids)
    fits = [i for i in budget.insertions if i * len(probe) <= k_win * seqlen]
    if not fits:
        raise ValueError(f"the canary ({len(probe)} tokens) does not fit the client's {k_win * seqlen} tokens")
    rows = []
    for ins in fits:
        for _ in range(budget.secrets):
            secret = rng.integers(0, 10, budget.length).tolist()
            canary, pos = encode(tokenizer, template=budget.template, secret=secret, digit_ids=digit_ids)
            planted, digit_pos = plant(client_windows, canary, pos, ins)
            a2_tokens = features[planted.reshape(-1)].double().pow(2)
            known = a2_tokens[~digit_pos.reshape(-1)].sum(0)  # everything but the digits
            t_idx = X.multiset_index(counts=counts, secret=secret)
            cand = known.view(1, -1) + ins * (cnt_t @ a2_digits)  # (M, d): exact S of every candidate
            s_obs = cand[t_idx]
            check = float(((s_obs - a2_tokens.sum(0)).abs() / s_obs).max())
            # public prior: the client's other tokens replaced by the public mean per token
            n_known_tok = int((~digit_pos).sum())
            template_tok = torch.tensor([t for i, t in enumerate(canary) if i not in set(pos)], dtype=torch.long)
            tmpl = features[template_tok].double().pow(2).sum(0) * ins if len(template_tok) else 0.0
            other_tok = n_known_tok - ins * len(template_tok)
            prior_known = mean_window_sq.double() * (other_tok / seqlen) + tmpl
            cand_prior = prior_known.view(1, -1) + ins * (cnt_t @ a2_digits)
            row = _one_secret(cand=cand, cand_prior=cand_prior, t_idx=t_idx, weights=weights, prio=prio,
                              sprio=sprio, rest=rest_counts, m=n_clients, method=method, sparsity=sparsity,
                              lam=budget.skellam_lam, rng=rng, chunk=budget.chunk, mult=mult, space=space)
            row.update({"insertions": ins, "stat_check_rel": check,
                        "max_exposure": X.max_exposure(space=space, tied_sequences=float(mult[t_idx]))})
            rows.append(row)
    views = ("own", "sum", "noisy_sum", "final")
    summary = {}
    for ins in fits:
        sub = [r for r in rows if r["insertions"] == ins]
        summary[str(ins)] = {"max_exposure_mean": float(np.mean([r["max_exposure"] for r in sub]))}
        for adv in ("informed", "prior"):
            for v in views:
                vals = [r[adv][v] for r in sub]
                summary[str(ins)][f"{adv}/{v}"] = _mean_ci(vals, top=math.log2(space))
    return {"budget": asdict(budget), "method": method, "space": space, "space_bits": math.log2(space),
            "chance_uniform_rank": X.chance_exposure(space=int(space)),
            "all_tied": X.all_tied_exposure(space=space), "matrices": [f"layers.0.{n}" for n in weights],
            "insertions": fits, "skipped_insertions": [i for i in budget.insertions if i not in fits],
            "canary_tokens": len(probe), "rows": rows, "summary": summary}


def _mean_ci(vals: list[float], *, top: float = math.inf) -> dict:
    """Mean with a t-interval over the secrets (independent draws), clipped to exposure's range [0, top]."""
    from scipy.stats import t as student

    a = np.asarray(vals, dtype=np.float64)
    if len(a) < 2:
        return {"mean": float(a.mean()) if len(a) else float("nan"), "ci": [float("nan"), float("nan")], "n": len(a)}
    h = float(student.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return {"mean": float(a.mean()), "ci": [max(float(a.mean() - h), 0.0), min(float(a.mean() + h), top)], "n": len(a)}


def _one_secret(*, cand, cand_prior, t_idx, weights, prio, sprio, rest, m, method, sparsity, lam, rng, chunk,
                mult, space) -> dict:
    """Exposure of one planted secret in every view for both adversaries."""
    M = cand.shape[0]
    informed = {v: np.zeros(M) for v in ("own", "noisy_sum", "final")}
    prior = {v: np.zeros(M) for v in ("own", "sum", "noisy_sum", "final")}
    for n, w in weights.items():
        sq = sqrt32(cand) if method == "wanda" else torch.ones_like(cand, dtype=torch.float32)
        sqp = sqrt32(cand_prior) if method == "wanda" else torch.ones_like(cand_prior, dtype=torch.float32)
        band = BandedRowTopK(weight=w, prio=prio[n], sqrt_lo=sq.min(0).values, sqrt_hi=sq.max(0).values,
                             sparsity=sparsity)
        pruned = torch.cat([band.band_flat(band.band_pruned(sq[s:s + chunk])) for s in range(0, M, chunk)])
        own_obs = band.full(band.band_pruned(sq[t_idx:t_idx + 1])[0])
        if method == "magnitude":  # the pipeline's own magnitude mask: the data cannot change it
            assert torch.equal(own_obs, _score_method_masks(method, w, sq[t_idx], prio[n], sparsity))
        idx = band.band_index()
        obs_b = pruned[t_idx]
        # informed: own / sum (rest known: the sum differs exactly where the own masks differ)
        informed["own"] -= (pruned != obs_b).sum(1).double().numpy()
        r_flat = rest[n].reshape(-1).to(torch.int64)
        total_obs = r_flat + own_obs.reshape(-1).to(torch.int64)
        noise = torch.from_numpy(skellam_noise((r_flat.numel(),), lam=lam, rng=rng))
        noisy = total_obs + noise  # what the server sees with Skellam noise inside the secure sum
        y_b = noisy[idx]
        # log-likelihood of the noisy counts: each band entry contributes lp(y - r - 1) if the candidate
        # prunes it, lp(y - r) otherwise (entries outside the band add the same constant to every candidate)
        base = (y_b - r_flat[idx]).numpy()
        gain = torch.from_numpy(_skellam_logpmf(base - 1, lam) - _skellam_logpmf(base, lam))
        informed["noisy_sum"] += (pruned.double() @ gain).numpy()
        fin = BandedFinal(base_counts=total_obs, prio=sprio[n], band=idx, sparsity=sparsity)
        n_oth, fin_band = [], []
        for s in range(0, M, chunk):
            a, b = fin.cut(r_flat[idx].view(1, -1) + pruned[s:s + chunk].to(torch.int64))
            n_oth.append(a)
            fin_band.append(b)
        n_oth, fin_band = torch.cat(n_oth), torch.cat(fin_band)
        informed["final"] -= ((n_oth - n_oth[t_idx]).abs() + (fin_band != fin_band[t_idx]).sum(1)).double().numpy()
        # public prior: candidates' masks at the prior statistic, scored by agreement on their band
        pband = BandedRowTopK(weight=w, prio=prio[n], sqrt_lo=sqp.min(0).values, sqrt_hi=sqp.max(0).values,
                              sparsity=sparsity)
        ppr = torch.cat([pband.band_flat(pband.band_pruned(sqp[s:s + chunk])) for s in range(0, M, chunk)])
        pidx = pband.band_index()
        sign = 2.0 * ppr.double() - 1.0
        fin_full = fin.full(r_flat[idx] + obs_b.to(torch.int64))
        views = {"own": own_obs.reshape(-1).double(), "sum": total_obs.double() / m,
                 "noisy_sum": noisy.double().clamp(0, m) / m,
                 "final": fin_full.double()}
        for v, frac in views.items():
            prior[v] += (sign * (frac[pidx] - 0.5).view(1, -1)).sum(1).numpy()
    informed["sum"] = informed["own"]
    out = {"secret_multiset_size": float(mult[t_idx])}
    for adv, sc in (("informed", informed), ("prior", prior)):
        out[adv] = {v: X.exposure(space=space, rank=X.expected_rank(scores=s, multiplicity=mult, true_index=t_idx,
                                                                    tol=1e-9 * max(1.0, float(np.abs(s).max()))))
                    for v, s in sc.items()}
    return out
