"""FedSpaLLM (Bai et al., NAACL 2025): federated pruning with l0-norm aggregation (Eq. 5), adaptive mask
expansion (Eqs. 6-7) and resource-aware layer sampling (Eqs. 8-9, Algorithm 1). See docs/fedspallm.md."""

from secprune.fedspallm.aggregate import (
    FixedPoint,
    aggregate_matrix,
    expand_mask,
    expansion_k,
    l0_aggregate,
    prune_counts,
    secure_l0_sums,
    target_pruned,
)
from secprune.fedspallm.driver import FedSpaResult, FedSpaSpec, fedspallm_prune
from secprune.fedspallm.sampling import layer_budgets, sample_layers, schedule

__all__ = ["FedSpaResult", "FedSpaSpec", "FixedPoint", "aggregate_matrix", "expand_mask", "expansion_k",
           "fedspallm_prune", "l0_aggregate", "layer_budgets", "prune_counts", "sample_layers", "schedule",
           "secure_l0_sums", "target_pruned"]
