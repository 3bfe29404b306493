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


RANK_RTOL = 1e-5     # the batch-and-single promise of recsys/eval/ranking.py rank()


def same_ranking(ids_a, sc_a, ids_b, sc_b, rtol: float = RANK_RTOL) -> None:
    """Assert that two top-k lists of one row are the same ranking up to float32 rounding (the
    promise of recsys/eval/ranking.py rank()): equal length, position-wise scores within rtol
    of the row's largest magnitude, and the same ids except that items whose scores are within
    that tolerance of each other may swap places (and the last places may hold other items
    tied with the k-th within it)."""
    ids_a, ids_b = np.asarray(ids_a).ravel(), np.asarray(ids_b).ravel()
    sc_a, sc_b = np.asarray(sc_a, dtype=np.float64).ravel(), np.asarray(sc_b, dtype=np.float64).ravel()
    assert len(ids_a) == len(ids_b) == len(sc_a) == len(sc_b), (len(ids_a), len(ids_b))
    if not len(ids_a):
        return
    fin = np.isfinite(sc_a) & np.isfinite(sc_b)
    assert np.array_equal(np.isfinite(sc_a), np.isfinite(sc_b)), (sc_a, sc_b)
    tol = rtol * max(1.0, float(np.abs(sc_a[fin]).max(initial=0.0)))
    assert np.all(np.abs(sc_a[fin] - sc_b[fin]) <= tol), (sc_a, sc_b)
    for i, (x, y) in enumerate(zip(ids_a.tolist(), ids_b.tolist())):
        if x == y:
            continue
        # another id at place i: both must score within tol of place i's score in both lists
        ja, jb = np.flatnonzero(ids_a == y), np.flatnonzero(ids_b == x)
        s_y = sc_a[ja[0]] if len(ja) else sc_a[-1]          # y outside list a: at most its last
        s_x = sc_b[jb[0]] if len(jb) else sc_b[-1]
        assert abs(s_y - sc_a[i]) <= 2 * tol and abs(s_x - sc_b[i]) <= 2 * tol, (i, ids_a, sc_a, ids_b, sc_b)
