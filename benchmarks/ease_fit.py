"""Dense EASE's fit against the bare float32 Cholesky inverse of its own Gram matrix, side by side
(issue: the fit within 1.5x of that floor at 10k and 20k items):

    python benchmarks/ease_fit.py --items 10000,20000 --users 100000 --interactions 5000000

Synthetic power-law data (as benchmarks/scale.py's). For each catalog size, in this order and in
one process: the EASE fit (recsys/models/ease.py: sparse Gram X^T X, Cholesky, cholesky_inverse,
the column scaling; registry.fit_memory, lambda 200), then the floor on the same G + lambda I:
torch.linalg.cholesky and torch.cholesky_inverse alone (G precomputed, not timed). Seconds, the
ratio, and the Gram step's own seconds (the part of the fit the floor leaves out); then
ease_lowrank's fit (--rank) on the same data.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recsys.models.ease import gram_matrix  # noqa: E402
from recsys.models.memory import MemoryConfig  # noqa: E402
from recsys.models.registry import fit_memory  # noqa: E402
from recsys.sparse.csr import csr  # noqa: E402
from recsys.sparse.similarity import sparse_rows  # noqa: E402


def data(U: int, I: int, N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (indptr, indices) of N draws of power-law users x power-law items, duplicates merged."""
    rng = np.random.default_rng(seed)
    pi = 1.0 / np.arange(1, I + 1) ** 0.9
    pu = 1.0 / np.arange(1, U + 1) ** 0.6
    users = rng.choice(U, N, p=pu / pu.sum())
    items = rng.permutation(I)[rng.choice(I, N, p=pi / pi.sum())]
    pairs = np.unique(np.stack([users, items], 1), axis=0).astype(np.int64)
    return csr(pairs, U)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", default="10000,20000")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--interactions", type=int, default=5_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lam", type=float, default=200.0)
    ap.add_argument("--rank", type=int, default=512, help="ease_lowrank's rank, fitted on the same data after")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for I in (int(x) for x in a.items.split(",")):
        indptr, indices = data(a.users, I, a.interactions)
        cfg = MemoryConfig(kind="ease", n_users=a.users, n_items=I, lam=a.lam, max_items=max(I, 20000))
        t0 = time.perf_counter()
        model = fit_memory(cfg, indptr, indices)
        fit_s = time.perf_counter() - t0
        del model
        X = sparse_rows(indptr, indices, torch.ones(len(indices)), I)
        t0 = time.perf_counter()
        G = gram_matrix(X, cfg)
        gram_s = time.perf_counter() - t0
        G.diagonal().add_(a.lam)
        t0 = time.perf_counter()
        L = torch.linalg.cholesky(G)
        del G
        P = torch.cholesky_inverse(L)
        floor_s = time.perf_counter() - t0
        del L, P
        low = MemoryConfig(kind="ease_lowrank", n_users=a.users, n_items=I, lam=a.lam, rank=a.rank)
        t0 = time.perf_counter()
        fit_memory(low, indptr, indices)
        low_s = time.perf_counter() - t0
        print(f"items {I:,}, users {a.users:,}, interactions {len(indices):,}: EASE fit {fit_s:.1f} s, "
              f"bare cholesky + cholesky_inverse {floor_s:.1f} s -> {fit_s / floor_s:.2f}x the floor "
              f"(of the fit, the sparse X^T X: {gram_s:.1f} s); ease_lowrank (rank {a.rank}) fit {low_s:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
