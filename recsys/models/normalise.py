"""Per-user normalisations of a (b, I) score block over the catalog, which make the scores of
unrelated models comparable before they are blended (learned/hybrid.py, blend.py):

    zscore   (s - mean_u) / std_u          dense scores
    max      s / max_u |s|                 sparse scores such as KNN votes (mostly 0)
"""
from __future__ import annotations

import torch


def standardise(s: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> torch.Tensor:
    """z_u: per row, (s - mean) / std over the catalog (or with given (B, 1) statistics); a
    constant row gives zeros."""
    if mean is None:
        std, mean = torch.std_mean(s, dim=1, keepdim=True)
    return (s - mean) / (std + 1e-8)


def max_abs(s: torch.Tensor) -> torch.Tensor:
    """Per row, s / max |s| (rows of zeros stay zeros)."""
    top = s.abs().amax(dim=1, keepdim=True)                                          # (b, 1)
    return s / torch.where(top > 0, top, torch.ones_like(top))
