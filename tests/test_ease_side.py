"""Side-information EASE (models/ease.py, model.side = beta): the closed form of EASE on the
interactions stacked with beta-weighted item token vectors, checked against the explicit formula."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import recsys
from recsys.sparse.similarity import sparse_rows


def _data():
    rng = np.random.default_rng(3)
    rows = [(u, int(i)) for u in range(30) for i in rng.choice(20, size=int(rng.integers(2, 7)), replace=False)]
    inter = pd.DataFrame(rows, columns=["user", "item"])
    items = pd.DataFrame({"item": range(22), "title": [f"w{i % 4} v{i % 7} x{i}" for i in range(22)]})
    return inter, items                                  # items 20, 21: text only (cold)


def test_side_zero_is_ease_and_side_matches_the_stacked_closed_form():
    inter, items = _data()
    plain = recsys.fit(inter, items, model="ease", lam=5.0)
    zero = recsys.fit(inter, items, model="ease", lam=5.0, side=0.0)
    assert torch.equal(plain.scorer.ease_B, zero.scorer.ease_B)
    m = recsys.fit(inter, items, model="ease", lam=5.0, side=2.0).scorer
    T = sparse_rows(m.tok_indptr, m.tok_indices, m.tok_weights, m.config.n_tokens).to_dense().double()   # (I, T)
    X = sparse_rows(m.hist_indptr, m.hist_indices, None, m.config.n_items).to_dense().double()        # (U, I)
    Xs = torch.cat([X, 2.0 * T.T])                                                                     # [X; beta T^T]
    P = torch.linalg.inv(Xs.T @ Xs + 5.0 * torch.eye(X.shape[1], dtype=torch.float64))
    B = -P / torch.diag(P)[None, :]
    B.fill_diagonal_(0)
    assert torch.allclose(m.ease_B.double(), B, atol=1e-5)
    # a cold item that shares words with warm ones gets a non-zero column: it can be recommended
    assert float(m.ease_B[:, 20].abs().sum()) > 0 and float(plain.scorer.ease_B[:, 20].abs().sum()) == 0


def test_side_needs_token_bags():
    inter, _ = _data()
    with pytest.raises(ValueError, match="model.side=2.0 needs the items' token bags"):
        recsys.fit(inter, model="ease", side=2.0)


def test_side_ease_export_round_trip(tmp_path):
    inter, items = _data()
    rec = recsys.fit(inter, items, model="ease", lam=5.0, side=2.0)
    back = recsys.Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "e")))
    assert back.scorer.config.side == 2.0 and torch.equal(back.scorer.ease_B, rec.scorer.ease_B)
    assert np.array_equal(back.recommend([0, 1], k=5)[0], rec.recommend([0, 1], k=5)[0])
