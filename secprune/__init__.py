"""secprune: privacy-preserving federated pruning of LLMs (FedPrLLM, FedSpaLLM) and its audits."""

__version__ = "0.2.0"
