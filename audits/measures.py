"""The Appendix C audits: entropy, mask similarity, sensitivity (each per layer and in total).

* Entropy (FedPrLLM App. C, footnote 3): the empirical entropy of the mask bits (1.0 bit at 50%
  sparsity) against the empirical entropy of block 0's q_proj weights rounded to fp16 (paper: 13.75 bits
  on LLaMA-7B). Those are *capacities*. What a mask reveals about the calibration set is
  I(mask; data) = H(mask) (the mask is a deterministic function of the data), and H(mask) <= H(data):
  for a client whose k windows are drawn at random offsets of a stream of N tokens, H(data) <= k log2 N,
  a few dozen bits (:func:`data_entropy_bound`). From masks of independent calibration draws we report
  the plug-in sum of per-bit entropies (it estimates sum_b H(bit_b), which bounds H(mask) from above only
  in expectation and is biased by the few draws; here it is far above H(data), so it is no useful
  bound), the fraction of bits that ever flip, and the number of distinct masks (every draw giving its
  own mask means the mask identifies its calibration set among the draws).
* Similarity: Hamming distance (fraction of differing bits) between masks of independent calibration
  sets (paper: 4.96%).
* Sensitivity: Hamming distance between masks of neighbouring sets, replace-one and remove-one
  (paper: 4.96% and 3.23%); magnitude pruning is the data-free baseline (exactly 0).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from secprune.audits.engine import LayerZeroMasks


def binary_entropy(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h)


def empirical_entropy(values) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``values``."""
    _, counts = np.unique(np.asarray(values).reshape(-1), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def fp16_entropy(weight: torch.Tensor) -> dict:
    w16 = weight.detach().to(torch.float16).cpu().numpy()
    return {"bits": empirical_entropy(w16.view(np.uint16)), "distinct_values": int(len(np.unique(w16))),
            "entries": int(w16.size)}


def mask_bit_entropy(mask: torch.Tensor) -> float:
    return float(binary_entropy(mask.float().mean().item()))


def information_across_draws(flat_masks: torch.Tensor, engine: LayerZeroMasks) -> dict:
    """Per-matrix and total information estimates from masks (draws, bits) of independent calibration sets."""
    n = flat_masks.shape[0]
    p = flat_masks.float().mean(0).numpy()
    h = binary_entropy(p)
    per_matrix = {}
    for name in engine.layout.names:
        sl = engine.layout.slice(name)
        per_matrix[name] = {"sum_bit_entropy_bits": float(h[sl].sum()), "bits": sl.stop - sl.start,
                            "fraction_flipping": float(((p[sl] > 0) & (p[sl] < 1)).mean()),
                            "mean_bit_entropy": float(h[sl].mean())}
    packed = [bytes(np.packbits(m.numpy())) for m in flat_masks]
    distinct = len(set(packed))
    _, counts = np.unique(np.array(packed, dtype=object), return_counts=True)
    q = counts / counts.sum()
    return {"draws": n, "sum_bit_entropy_bits": float(h.sum()), "bits": int(len(p)),
            "fraction_flipping": float(((p > 0) & (p < 1)).mean()),
            "mean_bit_entropy": float(h.mean()), "distinct_masks": distinct,
            "plugin_joint_entropy_bits": float(-(q * np.log2(q)).sum()), "plugin_cap_bits": math.log2(max(n, 1)),
            "per_matrix": per_matrix}


def data_entropy_bound(*, windows_per_client: int, stream_tokens: int, seqlen: int, pool: int) -> dict:
    """Upper bounds on H(data), hence on H(mask) = I(mask; data), for the calibration sampling at hand.

    ``bits``: a client's ``k`` windows start at uniformly random offsets of a stream of ``stream_tokens``
    tokens (how ``secprune`` draws calibration): H <= k log2(stream_tokens - seqlen). ``audit_draws_bits``:
    the entropy audit draws k distinct windows of a pool of ``pool``: H = log2 C(pool, k).
    """
    k = windows_per_client
    offsets = max(stream_tokens - seqlen, 1)
    return {"bits": float(k * math.log2(offsets)) if stream_tokens else float("nan"),
            "audit_draws_bits": float(math.log2(math.comb(pool, k))) if pool >= k else float("nan"),
            "windows_per_client": k, "stream_tokens": stream_tokens,
            "definition": "H(mask) <= H(data) <= k log2(number of window offsets)"}


def pairwise_hamming_packed(packed: dict[str, np.ndarray], shapes: dict[str, tuple], *, max_pairs: int = 120,
                            seed: int = 0) -> dict:
    """Hamming distances between parties of a MaskSet's packed arrays, per layer and total, over party pairs."""
    n = next(iter(packed.values())).shape[0]
    pairs = list(itertools.combinations(range(n), 2))
    rng = np.random.default_rng(seed)
    if len(pairs) > max_pairs:
        pairs = [pairs[i] for i in rng.choice(len(pairs), size=max_pairs, replace=False)]
    layers = sorted({int(nm.split(".")[1]) for nm in packed})
    per_layer = {li: [] for li in layers}
    per_matrix_type: dict[str, list[float]] = {}
    totals = []
    sizes = {nm: int(np.prod(shapes[nm])) for nm in packed}
    for i, j in pairs:
        tot_d = 0
        lay = {li: [0, 0] for li in layers}
        for nm, arr in packed.items():
            d = int(np.bitwise_count(arr[i] ^ arr[j]).sum())
            li = int(nm.split(".")[1])
            lay[li][0] += d
            lay[li][1] += sizes[nm]
            tot_d += d
            per_matrix_type.setdefault(nm.split(".", 2)[2], []).append(d / sizes[nm])
        for li in layers:
            per_layer[li].append(lay[li][0] / lay[li][1])
        totals.append(tot_d / sum(sizes.values()))
    return {"pairs": len(pairs), "total": totals, "mean": float(np.mean(totals)) if totals else float("nan"),
            "per_layer_mean": {str(li): float(np.mean(v)) for li, v in per_layer.items()},
            "per_matrix_type_mean": {k: float(np.mean(v)) for k, v in per_matrix_type.items()}}


def pairwise_hamming_flat(flat: torch.Tensor, *, max_pairs: int = 200) -> list[float]:
    n = flat.shape[0]
    out = []
    for i, j in itertools.islice(itertools.combinations(range(n), 2), max_pairs):
        out.append(float((flat[i] != flat[j]).float().mean()))
    return out


def neighbour_sets(rng: np.random.Generator, population: np.ndarray, k: int, kind: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(D, D') differing in one window: 'replace' swaps one window for a fresh one, 'remove' drops one."""
    d = rng.choice(population, size=k + 1, replace=False)
    base = d[:k]
    if kind == "replace":
        return base, np.concatenate([base[:-1], d[k:]])
    if kind == "remove":
        if k < 2:
            raise ValueError("remove-one needs clients with at least 2 windows")
        return base, base[:-1]
    raise ValueError(f"kind must be replace or remove, got {kind!r}")


def sensitivity_layer0(engine: LayerZeroMasks, population: np.ndarray, *, k: int, pairs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for kind in ("replace", "remove"):
        if kind == "remove" and k < 2:
            continue
        vals, per_matrix = [], {n: [] for n in engine.layout.names}
        for _ in range(pairs):
            a, b = neighbour_sets(rng, population, k, kind)
            ma, mb = engine.flat(a), engine.flat(b)
            vals.append(float((ma != mb).float().mean()))
            for n in engine.layout.names:
                sl = engine.layout.slice(n)
                per_matrix[n].append(float((ma[sl] != mb[sl]).float().mean()))
        out[kind] = {"hamming": vals, "mean": float(np.mean(vals)), "max": float(np.max(vals)),
                     "max_bits": int(round(max(vals) * engine.layout.size)),
                     "per_matrix_mean": {n: float(np.mean(v)) for n, v in per_matrix.items()}}
    return out
