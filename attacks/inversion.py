"""Reconstructing a client's calibration tokens from its layer-0 mask.

Two attacks, both by an honest-but-curious server that knows the public model:

**(a) The paper's gradient inversion** (FedPrLLM App. C, after Zhu et al. 2019 "Deep Leakage from
Gradients"): optimise free input embeddings ``Z`` (positions x hidden) so that the mask they induce
matches the target mask, with a differentiable surrogate: soft mask ``sigmoid((t_i - s_ij) / tau)`` of
Wanda scores ``s_ij = |W_ij| * ||X_j||`` (``X = input_layernorm(Z)``, ``t_i`` the row's k-th score) and
a binary cross-entropy loss; tokens are read back as the nearest embedding rows (cosine).

**(b) A structured attack that uses what Wanda reveals.** In row ``i`` of q/k/v_proj (all three read the
same input ``X = input_layernorm(E[tokens])`` at layer 0) the kept weights satisfy
``|W_ij| n_j > |W_ik| n_k`` for every pruned ``k``, with ``n_j = ||X_j||``: the mask is a set of linear
inequalities in ``u_j = log n_j``. We estimate ``u`` by logistic regression of "kept" on
``beta (log|W_ij| + u_j - v_i)`` with one threshold ``v_i`` per row (a Rasch / Bradley-Terry style
model). At layer 0 ``X`` depends only on the token, so ``n_j^2 = sum_t c_t a_tj^2`` with
``a_t = input_layernorm(E[t])``: linear in the token histogram ``c``. We solve the non-negative least
squares problem ``min_c>=0 ||A^T c - s n^2||`` (projected accelerated gradient, Beck & Teboulle 2009) and
rank tokens by ``c``. The same estimator applies to vote counts (the fraction of clients that kept
each weight) and to randomized-response masks (labels flipped with known probability).

Scoring: precision / recall of the top-K tokens (K = number of distinct tokens the client used) against
the client's true token set, next to a prior-only baseline (the K most frequent tokens of the public
population), and recall of the client's *rare* tokens (outside the population's most frequent ones).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from secprune.model import decoder_layers

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def token_features(model) -> torch.Tensor:
    """a_t = input_layernorm(E[t]) of decoder layer 0 for every vocabulary token: (V, hidden)."""
    layer = decoder_layers(model)[0]
    emb = model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        return torch.cat([layer.input_layernorm(emb[s:s + 4096].unsqueeze(0))[0]
                          for s in range(0, emb.shape[0], 4096)]).float()


def layer0_weights(model, names=QKV) -> dict[str, torch.Tensor]:
    layer = decoder_layers(model)[0]
    mods = dict(layer.named_modules())
    return {n: mods[n].weight.detach().float().cpu() for n in names if n in mods}


# ---------------------------------------------------------------- (b) structured attack
def estimate_log_norms(kept: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], *, beta: float = 8.0,
                       iters: int = 60, weight_decay: float = 1e-4) -> torch.Tensor:
    """u_j ~ log ||X_j|| from kept-probabilities (1 - mask, or 1 - votes/m) of matrices sharing one input."""
    cols = next(iter(weights.values())).shape[1]
    y = torch.cat([kept[n].float() for n in weights]).clamp(0, 1)
    aw = torch.cat([weights[n].abs() for n in weights])
    valid = aw > 0
    logw = torch.log(aw.clamp_min(1e-12))
    rows = y.shape[0]
    u = torch.zeros(cols, requires_grad=True)
    # initial row thresholds: the row median of log|W| (u = 0)
    v = logw.median(dim=1).values.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([u, v], lr=1, max_iter=iters, line_search_fn="strong_wolfe")
    n_valid = valid.sum().clamp_min(1)

    def closure():
        opt.zero_grad()
        z = beta * (logw + u.view(1, -1) - v.view(-1, 1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = (loss * valid).sum() / n_valid + weight_decay * (u.pow(2).mean() + (u.mean()) ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    del rows
    return u.detach() - u.detach().mean()


def nnls_histogram(features: torch.Tensor, sq_norms: torch.Tensor, *, iters: int = 200,
                   candidates: torch.Tensor | None = None) -> torch.Tensor:
    """c >= 0 minimizing ||A^T c - b||^2 with A = features^2 (V, d), b = sq_norms scaled to A's mean.

    FISTA with step 1/L, L = ||A||_2^2 (power iteration). Returns c over the vocabulary (0 off-candidates).
    """
    A = features.pow(2)
    if candidates is not None:
        A = A[candidates]
    b = sq_norms.float() / sq_norms.float().mean() * A.mean(0).mean()
    x = torch.randn(A.shape[1])
    for _ in range(30):
        x = A.T @ (A @ x)
        x = x / x.norm()
    L = float((A @ x).norm() ** 2) + 1e-12
    c = torch.zeros(A.shape[0])
    z, t = c.clone(), 1.0
    for _ in range(iters):
        grad = A @ (A.T @ z - b)
        c_new = (z - grad / L).clamp_min(0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = c_new + (t - 1) / t_new * (c_new - c)
        c, t = c_new, t_new
    if candidates is None:
        return c
    full = torch.zeros(features.shape[0])
    full[candidates] = c
    return full


def structured_attack(kept: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], features: torch.Tensor, *,
                      candidates: torch.Tensor | None = None, beta: float = 8.0) -> dict:
    u = estimate_log_norms(kept, weights, beta=beta)
    sq = torch.exp(2 * u)
    c = nnls_histogram(features, sq, candidates=candidates)
    return {"log_norms": u, "histogram": c}


# ---------------------------------------------------------------- (a) the paper's attack
def embedding_inversion(target_mask: dict[str, torch.Tensor], model, *, positions: int = 64, steps: int = 150,
                        tau: float = 0.05, lr: float = 0.05, sparsity: float = 0.5, seed: int = 0,
                        candidates: torch.Tensor | None = None) -> dict:
    """Optimise free embeddings to reproduce the target layer-0 q/k/v mask; tokens by nearest embedding."""
    gen = torch.Generator().manual_seed(seed)
    layer = decoder_layers(model)[0]
    emb = model.get_input_embeddings().weight.detach().float()
    weights = layer0_weights(model, [n for n in QKV if f"layers.0.{n}" in target_mask])
    z = (emb[torch.randint(0, emb.shape[0], (positions,), generator=gen)] +
         0.5 * emb.std() * torch.randn(positions, emb.shape[1], generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr * float(emb.std()))
    targets = {n: target_mask[f"layers.0.{n}"].float() for n in weights}
    norm = layer.input_layernorm
    for p in norm.parameters():
        p.requires_grad_(False)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        x = norm(z.unsqueeze(0))[0]
        n = x.pow(2).sum(0).clamp_min(1e-12).sqrt()
        loss = 0.0
        for name, w in weights.items():
            s = w.abs() * n.view(1, -1)
            s = s / s.mean()
            k = int(s.shape[1] * sparsity)
            t = s.detach().kthvalue(k, dim=1, keepdim=True).values
            soft = torch.sigmoid((t - s) / tau)  # ~1 where pruned
            loss = loss + torch.nn.functional.binary_cross_entropy(soft.clamp(1e-6, 1 - 1e-6), targets[name])
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        e = emb if candidates is None else emb[candidates]
        sim = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(e, dim=1).T
        idx = sim.argmax(1)
        tokens = idx if candidates is None else candidates[idx]
    return {"tokens": tokens.tolist(), "loss_first": history[0], "loss_last": history[-1]}


# ---------------------------------------------------------------- scoring
def recovery(ranked: list[int], true_tokens: set[int], *, k: int | None = None, rare: set[int] | None = None) -> dict:
    """Precision / recall of the first ``k`` ranked tokens (k = |true| by default)."""
    k = len(true_tokens) if k is None else k
    top = ranked[:k]
    hits = [t for t in top if t in true_tokens]
    out = {"k": k, "hits": len(hits), "precision": len(hits) / max(len(top), 1),
           "recall": len(set(hits)) / max(len(true_tokens), 1)}
    if rare is not None:
        rare_true = true_tokens & rare
        out["rare_true"] = len(rare_true)
        out["rare_recall"] = len(set(hits) & rare_true) / max(len(rare_true), 1) if rare_true else float("nan")
    return out


def ranked_tokens(hist: torch.Tensor, *, limit: int | None = None) -> list[int]:
    order = torch.argsort(hist, descending=True, stable=True)
    order = order[hist[order] > 0] if (hist > 0).any() else order
    return order[:limit].tolist() if limit else order.tolist()


def kept_from_view(view: str, value: dict[str, torch.Tensor], *, n_clients: int = 1, q: float = 0.0
                   ) -> dict[str, torch.Tensor]:
    """Kept-probabilities per matrix from a view: own / rr mask (debiased for q) or (noisy) vote counts."""
    out = {}
    for name, v in value.items():
        short = name.split(".", 2)[2] if name.startswith("layers.") else name
        if view in ("own", "rr"):
            kept = 1.0 - v.float()
            if q > 0:
                kept = ((kept - q) / (1 - 2 * q)).clamp(0, 1)
        else:
            kept = (1.0 - v.float() / n_clients).clamp(0, 1)
        out[short] = kept
    return out


def population_rare(freq: np.ndarray, *, top: int = 1000) -> set[int]:
    """Tokens outside the population's ``top`` most frequent ones."""
    common = set(np.argsort(-freq)[:top].tolist())
    return set(range(len(freq))) - common


# ---------------------------------------------------------------- (c) prior + mask evidence, and baselines
def presence_log_prior(*, freq: np.ndarray, n_tokens: int) -> np.ndarray:
    """log P(token t occurs among ``n_tokens`` tokens drawn i.i.d. from the public frequencies)."""
    f = np.asarray(freq, dtype=np.float64)
    f = f / max(f.sum(), 1e-300)
    with np.errstate(divide="ignore"):
        return np.log(-np.expm1(n_tokens * np.log1p(-np.clip(f, 0, 1 - 1e-16))))


def token_evidence(*, kept: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], features_sq: torch.Tensor,
                   prior_sq: torch.Tensor, beta: float = 8.0) -> np.ndarray:
    """Per-token evidence of the view (Rao score, :mod:`secprune.attacks.evidence`): the first-order gain in
    the mask's log-likelihood if one more occurrence of token t were in the client's data.
    ``features_sq`` = a_t^2 (V, d), shared by the matrices of ``weights`` (layer 0's q/k/v read the same input)."""
    from secprune.attacks.evidence import column_scores

    prior = {n: prior_sq for n in weights}
    g = column_scores(kept=kept, weights=weights, prior_sq=prior, beta=beta)
    coef = sum(g.values()) / (2 * prior_sq.double().clamp_min(1e-300))
    return (features_sq @ coef.to(features_sq.dtype)).double().numpy()


def _standardise(x: np.ndarray, cand: np.ndarray) -> np.ndarray:
    sd = float(x[cand].std())
    return (x - float(x[cand].mean())) / (sd if sd > 0 else 1.0)


def combined_ranking(*, log_prior: np.ndarray, evidence: np.ndarray, weight: float, candidates: np.ndarray
                     ) -> list[int]:
    """Candidate tokens ranked by log P(present | public prior) + weight * standardised evidence."""
    cand = np.zeros(len(log_prior), dtype=bool)
    cand[candidates] = True
    score = np.where(cand, log_prior + weight * _standardise(evidence, cand), -np.inf)
    order = np.argsort(-score, kind="stable")
    return [int(t) for t in order[: int(cand.sum())]]


def fit_weight(*, shadows: list[tuple[np.ndarray, set[int]]], log_prior: np.ndarray, candidates: np.ndarray,
               grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)) -> tuple[float, dict]:
    """The evidence weight with the best mean precision at K on the attacker's shadow clients (whose tokens
    it knows); weight 0 is the prior alone, so on the shadows the combination never loses to it."""
    table = {}
    for w in grid:
        table[w] = float(np.mean([recovery(combined_ranking(log_prior=log_prior, evidence=e, weight=w,
                                                             candidates=candidates), true)["precision"]
                                  for e, true in shadows]))
    best = max(grid, key=lambda w: (table[w], -w))
    return best, {str(k): v for k, v in table.items()}


def data_free_baselines(*, true_tokens: set[int], prior_rank: list[int], candidates: np.ndarray, freq: np.ndarray,
                        k: int) -> dict:
    """What an attack that ignores the mask gets at the same K: the K most frequent public tokens, and K
    tokens uniformly at random among the candidates (expected precision); ``best`` is the larger."""
    cand = set(int(t) for t in candidates)
    prior = recovery(prior_rank, true_tokens, k=k)["precision"]
    chance = len(true_tokens & cand) / max(len(cand), 1)
    f = np.asarray(freq, dtype=np.float64)
    per_position = float(f[list(true_tokens)].sum() / max(f.sum(), 1e-300)) if true_tokens else 0.0
    return {"k": k, "prior_precision": prior, "chance_precision": chance, "best": max(prior, chance),
            "best_name": "public-frequency prior" if prior >= chance else "uniform chance",
            "prior_sampling_per_position": per_position}
