"""Shared helpers for the test_core_* tests: small random scorers and CSV writers."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from recsys.models.learned import Scorer, ScorerConfig
from recsys.sparse.csr import csr_from_pairs


def random_csr(rng: np.random.Generator, n_rows: int, n_cols: int, max_per_row: int,
               empty_rows=()) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """(indptr, indices, rows as Python lists): distinct random columns per row, 0..max_per_row
    of them (none for `empty_rows`)."""
    lists = []
    for r in range(n_rows):
        n = 0 if r in empty_rows else int(rng.integers(1, max_per_row + 1))
        lists.append(sorted(rng.choice(n_cols, size=n, replace=False).tolist()))
    rows = np.array([r for r, l in enumerate(lists) for _ in l], dtype=np.int64)
    cols = np.array([c for l in lists for c in l], dtype=np.int64)
    indptr, indices, _ = csr_from_pairs(rows, cols, n_rows)
    return torch.from_numpy(indptr), torch.from_numpy(indices), lists


def random_scorer(variant: str, n_users: int = 9, n_items: int = 13, n_tokens: int = 10,
                  dim: int = 6, seed: int = 0, cold_items=(), empty_users=(), **cfg) -> Scorer:
    """A Scorer with random embeddings, a random non-zero item bias, random token bags and
    random histories (that avoid `cold_items`; `empty_users` have none)."""
    rng = np.random.default_rng(seed)
    tok_indptr, tok_indices, tok_lists = random_csr(rng, n_items, n_tokens, 4)
    warm_items = [i for i in range(n_items) if i not in cold_items]
    hist = []
    for u in range(n_users):
        n = 0 if u in empty_users else int(rng.integers(1, 5))
        hist.append(sorted(rng.choice(warm_items, size=n, replace=False).tolist()))
    hrows = np.array([u for u, h in enumerate(hist) for _ in h], dtype=np.int64)
    hcols = np.array([i for h in hist for i in h], dtype=np.int64)
    hist_indptr, hist_indices, _ = csr_from_pairs(hrows, hcols, n_users)
    warm = torch.ones(n_items, dtype=torch.bool)
    warm[list(cold_items)] = False
    buffers = {
        "tok_indptr": tok_indptr, "tok_indices": tok_indices,
        "tok_weights": torch.from_numpy(rng.uniform(0.1, 1.0, len(tok_indices))).float(),
        "hist_indptr": torch.from_numpy(hist_indptr), "hist_indices": torch.from_numpy(hist_indices),
        "item_warm": warm,
    }
    config = ScorerConfig(n_users=n_users, n_items=n_items, n_tokens=n_tokens, variant=variant,
                          dim=dim, **cfg)
    torch.manual_seed(seed)
    scorer = Scorer(config, buffers)
    with torch.no_grad():
        for p in scorer.parameters():
            p.copy_(torch.randn_like(p))
    return scorer.eval()


def write_csv(path, columns: list[str], rows: list[tuple]) -> str:
    path = os.fspath(path)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def serve_frame(seed=0, U=15, I=12):
    """Interactions of U users over I items (item m0 taken by everyone) and an item table with
    titles: the small catalog the service tests export."""
    rng = np.random.default_rng(seed)
    X = (rng.random((U, I)) < 0.35).astype(np.float64)
    X[:, 0] = 1
    u, i = np.nonzero(X)
    df = pd.DataFrame({"user": [f"u{a}" for a in u], "item": [f"m{b}" for b in i], "rating": 4.0})
    items = pd.DataFrame({"item": [f"m{b}" for b in range(I)],
                          "title": [f"film {b} {'red' if b % 2 else 'blue'}" for b in range(I)]})
    return df, items
