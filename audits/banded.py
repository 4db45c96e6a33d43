"""Exact Wanda row masks and server final masks for many nearby statistics, computed on a band only.

The canary exposure attack needs the exact layer-0 q/k/v mask of every candidate secret (thousands of
them). Candidates differ only in a few tokens, so their squared column norms ``S_j`` differ little: per
column ``sqrt(S_j)`` lies in ``[lo_j, hi_j]`` over all candidates. Scores ``|W_ij| sqrt(S_j)`` (float32, as
:func:`secprune.methods.wanda_score` computes them) then lie in ``[|W_ij| lo_j, |W_ij| hi_j]`` and every
row's k-th score in ``[kth(|W_i.| lo), kth(|W_i.| hi)]`` (order statistics are monotone). An entry whose
largest possible score is below the smallest possible threshold is pruned for every candidate; one whose
smallest score is above the largest threshold is kept for every candidate; only the *band* between needs
the per-candidate selection, which keeps the ``k - (#always pruned)`` lowest band entries by (score,
priority), exactly the rule of :func:`secprune.topk.lowest_k_mask`. Tests check bit-equality with it.

:class:`BandedFinal` does the same for the server's final mask (``layer`` group over vote counts, ties by
priority; :func:`secprune.fedprllm.aggregate.final_mask`) when only the band entries' counts change: the entries
outside the band keep their relative order, so the k lowest keys of the union are found by merging the
band's new keys into the fixed sorted order of the others.
"""

from __future__ import annotations

import torch

from secprune.topk import ordered_key


class BandedRowTopK:
    """Exact row-group Wanda masks of one matrix for a family of column statistics."""

    def __init__(self, *, weight: torch.Tensor, prio: torch.Tensor, sqrt_lo: torch.Tensor, sqrt_hi: torch.Tensor,
                 sparsity: float) -> None:
        absw = weight.abs().float()
        rows, cols = absw.shape
        self.shape = (rows, cols)
        self.k = int(cols * sparsity)
        lo_s = absw * sqrt_lo.to(torch.float32).view(1, -1)
        hi_s = absw * sqrt_hi.to(torch.float32).view(1, -1)
        t_lo = lo_s.kthvalue(self.k, dim=1, keepdim=True).values
        t_hi = hi_s.kthvalue(self.k, dim=1, keepdim=True).values
        always = hi_s < t_lo
        never = lo_s > t_hi
        band = ~(always | never)
        self.always = always
        self.band = band
        self.need = self.k - always.sum(1)  # band entries to prune per row
        width = int(band.sum(1).max()) if rows else 0
        self.width = max(width, 1)
        # padded band coordinates: (rows, width) column indices, pad with column 0 and a +inf key
        idx = torch.zeros(rows, self.width, dtype=torch.long)
        pad = torch.ones(rows, self.width, dtype=torch.bool)
        for i in range(rows):
            cols_i = torch.nonzero(band[i]).view(-1)
            idx[i, : len(cols_i)] = cols_i
            pad[i, : len(cols_i)] = False
        self.idx, self.pad = idx, pad
        self.absw_band = absw.gather(1, idx)
        prio_full = prio.expand(rows, cols) if prio.shape != (rows, cols) else prio
        self.prio_band = prio_full.gather(1, idx)

    @property
    def band_size(self) -> int:
        return int(self.band.sum())

    def band_pruned(self, sqrt_s: torch.Tensor) -> torch.Tensor:
        """(B, rows, width) bool: which band entries each candidate prunes (pads False).

        ``sqrt_s`` is (B, cols) float32 sqrt of each candidate's statistic, inside [sqrt_lo, sqrt_hi].
        """
        sc = self.absw_band.unsqueeze(0) * sqrt_s.to(torch.float32)[:, self.idx]  # (B, rows, width)
        key = ordered_key(sc, self.prio_band.unsqueeze(0).expand_as(sc))
        key = key.masked_fill(self.pad.unsqueeze(0), torch.iinfo(torch.int64).max)
        srt = key.sort(dim=2).values
        take = (self.need - 1).clamp_min(0).view(1, -1, 1).expand(srt.shape[0], -1, 1)
        thr = srt.gather(2, take)  # the need-th lowest key of every row (keys are unique)
        return (key <= thr) & (self.need > 0).view(1, -1, 1) & ~self.pad.unsqueeze(0)

    def band_flat(self, pruned_band: torch.Tensor) -> torch.Tensor:
        """(B, band_size) bool in row-major band order (drops the pads)."""
        return pruned_band[:, ~self.pad]

    def band_index(self) -> torch.Tensor:
        """Flat (row-major) entry indices of the band, in :meth:`band_flat` order."""
        rows = torch.arange(self.shape[0]).view(-1, 1).expand_as(self.idx)
        return (rows * self.shape[1] + self.idx)[~self.pad]

    def full(self, pruned_band: torch.Tensor) -> torch.Tensor:
        """The complete (rows, cols) mask of one candidate from its band decisions (for tests and views)."""
        m = self.always.clone()
        rows = torch.arange(self.shape[0]).view(-1, 1).expand_as(self.idx)
        sel = ~self.pad
        m[rows[sel], self.idx[sel]] = pruned_band[sel]
        return m


class BandedFinal:
    """Exact server final masks (layer group, top-k votes pruned, ties by priority) when only the counts
    of ``band`` entries (flat indices) change from ``base_counts``."""

    def __init__(self, *, base_counts: torch.Tensor, prio: torch.Tensor, band: torch.Tensor, sparsity: float) -> None:
        c = base_counts.reshape(-1).to(torch.int64)
        p = prio.reshape(-1).to(torch.int64)
        n = c.numel()
        self.k = int(n * sparsity)
        self.shift = int(p.max()) + 1
        self.band = band.to(torch.int64)
        self.prio_band = p[self.band]
        other = torch.ones(n, dtype=torch.bool)
        other[self.band] = False
        keys_other = (-c[other]) * self.shift + p[other]  # lowest keys are pruned: most votes first
        self.sorted_other, order = keys_other.sort()
        self.other_index = torch.nonzero(other).view(-1)[order]
        self.n = n

    def _keys(self, band_counts: torch.Tensor) -> torch.Tensor:
        return (-band_counts.to(torch.int64)) * self.shift + self.prio_band.view(1, -1)

    def cut(self, band_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each candidate (B, band) counts: (number of non-band entries pruned (B,), band pruned (B, band))."""
        keys = self._keys(band_counts)  # (B, nb)
        ks, _ = keys.sort(dim=1)
        nb = ks.shape[1]
        # taking i band keys: the k-th smallest overall needs k - i others; valid when the i-th band key is
        # below the (k - i)-th other key and the (k - i + 1)... find the i with ks[i-1] < other[k-i] and
        # other[k-i-1] < ks[i] (strict: keys are unique)
        i = torch.arange(nb + 1).view(1, -1)
        j = self.k - i  # others taken
        oth = self.sorted_other
        big = torch.iinfo(torch.int64).max
        small = torch.iinfo(torch.int64).min
        next_other = torch.where((j >= 0) & (j < len(oth)), oth[j.clamp(0, len(oth) - 1)], torch.full_like(j, big))
        last_other = torch.where((j >= 1) & (j <= len(oth)), oth[(j - 1).clamp(0, len(oth) - 1)],
                                 torch.full_like(j, small))
        padded = torch.cat([torch.full((ks.shape[0], 1), small), ks, torch.full((ks.shape[0], 1), big)], dim=1)
        last_band = padded[:, :-1]  # the i-th band key taken (i >= 1) or -inf
        next_band = padded[:, 1:]  # the (i+1)-th band key (not taken) or +inf
        ok = (last_band < next_other) & (last_other < next_band) & (j >= 0) & (j <= len(oth))
        taken = ok.float().argmax(dim=1)  # exactly one valid i per candidate
        thr = padded.gather(1, taken.view(-1, 1))  # largest band key taken
        band_pruned = (keys <= thr) & (taken.view(-1, 1) > 0)
        return (self.k - taken), band_pruned

    def full(self, band_counts: torch.Tensor) -> torch.Tensor:
        """The complete flat final mask of one candidate (1, band) (for tests)."""
        n_other, band_pruned = self.cut(band_counts.view(1, -1))
        m = torch.zeros(self.n, dtype=torch.bool)
        m[self.other_index[: int(n_other[0])]] = True
        m[self.band] = band_pruned[0]
        return m


def sqrt32(sq: torch.Tensor) -> torch.Tensor:
    """sqrt of float64 squared norms, rounded to float32 exactly as ``wanda_score`` does."""
    return sq.sqrt().to(torch.float32)
