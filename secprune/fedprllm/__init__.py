"""FedPrLLM (Guo et al., 2025): clients send binary masks, the server sums them and keeps the top-k by layer,
row or column (Fig. 1); optional scaling; one-shot or iterative. ``strategy.py`` (client step, server step),
``aggregate.py`` (the server's math), ``driver.py`` (the in-process run), ``comm.py`` (bytes), ``run.py``
(`secprune prune --algorithm fedprllm`)."""
