"""EASE from the Gram matrix's top eigenpairs (recsys/models/ease_lowrank.py, model=ease_lowrank)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import recsys
from recsys import Recommender
from recsys.models.ease_lowrank import top_eigen
from recsys.models.memory import MemoryConfig
from recsys.models.registry import fit_memory
from recsys.sparse.similarity import sparse_rows


def _data(U=40, I=15, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((U, I)) < 0.3
    X[:, 0] = True
    indptr = torch.zeros(U + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.from_numpy(X.sum(1)), 0)
    return X, indptr, torch.from_numpy(np.nonzero(X)[1]).long()


def _bags(I=15, T=6, seed=1):
    rng = np.random.default_rng(seed)
    W = (rng.random((I, T)) < 0.4) * rng.random((I, T))
    W /= np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    indptr = torch.zeros(I + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.from_numpy((W > 0).sum(1)), 0)
    rows, cols = np.nonzero(W)
    return indptr, torch.from_numpy(cols).long(), torch.from_numpy(W[rows, cols]).float(), T


@pytest.mark.parametrize("user_block, float64_bytes", [(1 << 17, 1 << 30), (7, 1 << 30), (1 << 17, 0)])
def test_at_full_rank_the_scores_are_dense_eases(user_block, float64_bytes, monkeypatch):
    """Known answer: with every eigenpair kept, P is exactly (G + lambda I)^-1, so every score
    (unseen and seen items alike) is dense EASE's x_u B (X Q in one block of users or in many;
    the eigensolver in float64, or in float32 as for a million items)."""
    monkeypatch.setattr("recsys.models.ease_lowrank.USER_BLOCK", user_block)
    monkeypatch.setattr("recsys.models.ease_lowrank.FLOAT64_BYTES", float64_bytes)
    X, indptr, indices = _data()
    U, I = X.shape
    users = torch.arange(U)
    dense = fit_memory(MemoryConfig(kind="ease", n_users=U, n_items=I, lam=3.0), indptr, indices)
    low = fit_memory(MemoryConfig(kind="ease_lowrank", n_users=U, n_items=I, lam=3.0, rank=I), indptr, indices)
    torch.testing.assert_close(low.score(users, low.item_side()), dense.score(users, dense.item_side()),
                               atol=2e-4, rtol=1e-4)
    G = torch.from_numpy(X.astype(np.float64))
    B = torch.linalg.inv(G.T @ G + 3.0 * torch.eye(I, dtype=torch.float64))
    B = torch.eye(I, dtype=torch.float64) - B / B.diagonal()[None, :]
    torch.testing.assert_close(low.score(users, None).double(), G @ B, atol=2e-4, rtol=1e-4)   # by hand


def test_side_information_at_full_rank_is_ease_side():
    X, indptr, indices = _data(seed=2)
    U, I = X.shape
    tok = _bags(I)
    kw = dict(n_users=U, n_items=I, lam=2.0, side=1.5)
    dense = fit_memory(MemoryConfig(kind="ease", **kw), indptr, indices, None, *tok)
    low = fit_memory(MemoryConfig(kind="ease_lowrank", rank=I, **kw), indptr, indices, None, *tok)
    users = torch.arange(U)
    torch.testing.assert_close(low.score(users, None), dense.score(users, None), atol=2e-4, rtol=1e-4)


def test_the_randomized_eigenpairs_are_the_top_ones():
    X, indptr, indices = _data(U=60, I=30, seed=3)
    Xs = sparse_rows(indptr, indices, torch.ones(len(indices)), 30)
    s, V = top_eigen(Xs, MemoryConfig(kind="ease_lowrank", n_users=60, n_items=30, rank=5), {})
    G = torch.from_numpy(X.astype(np.float64))
    want = torch.linalg.eigvalsh(G.T @ G).flip(0)[:5]
    torch.testing.assert_close(s, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(V.T @ V, torch.eye(5, dtype=torch.float64), atol=1e-8, rtol=0)


def test_fit_export_load_and_new_items(tmp_path):
    X, _, _ = _data(seed=4)
    u, i = np.nonzero(X)
    df = pd.DataFrame({"user": u, "item": i})
    items = pd.DataFrame({"item": range(X.shape[1]), "title": [f"film {k % 4}" for k in range(X.shape[1])]})
    model = recsys.LowRankEASE(rank=4).fit(df, items=items)
    assert model.recommender_.scorer.lr_item.shape == (X.shape[1], 4)
    again = Recommender.from_pretrained(model.save_pretrained(str(tmp_path / "e")))
    torch.testing.assert_close(again.scores([0, 3]), model.scores([0, 3]))
    assert again.add_items(pd.DataFrame({"item": [99], "title": ["film 1"]})) == 1
    ids, _ = again.recommend(0, k=3)
    assert len(ids) == 3
