"""recsys.fit: any model from a DataFrame or a sparse matrix, in-process, no files written, the
same Recommender as from_pretrained."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

import recsys
from recsys import Recommender


def _frame(seed=0, U=15, I=12):
    rng = np.random.default_rng(seed)
    X = (rng.random((U, I)) < 0.35).astype(np.float64)
    X[:, 0] = 1                                      # every user has an item; item 0 everybody's
    X[0, 1] = 1
    u, i = np.nonzero(X)
    df = pd.DataFrame({"who": [f"u{a}" for a in u], "what": [f"m{b}" for b in i], "rating": 4.0})
    items = pd.DataFrame({"what": [f"m{b}" for b in range(I)], "title": [f"film {b} {'red' if b % 2 else 'blue'}"
                                                                            for b in range(I)]})
    return X, df, items


def test_ease_from_a_dataframe_is_the_closed_form(tmp_path, monkeypatch):
    """Known answer: the fitted scores are X B with B from (X^T X + lambda I)^-1, by numpy; no
    file appears in the working directory."""
    monkeypatch.chdir(tmp_path)
    X, df, items = _frame()
    rec = recsys.fit(df, items=items, model="ease", lam=3.0, user_col="who", item_col="what")
    assert isinstance(rec, Recommender) and os.listdir(tmp_path) == []
    P = np.linalg.inv(X.T @ X + 3.0 * np.eye(X.shape[1]))
    B = np.eye(X.shape[1]) - P / np.diag(P)[None, :]
    users = [f"u{a}" for a in range(X.shape[0])]
    cols = [rec.items.ids.index(f"m{b}") for b in range(X.shape[1])]
    got = rec.scores(users).double().numpy()[:, cols]
    np.testing.assert_allclose(got, X @ B, atol=1e-4)
    ids, _ = rec.recommend("u0", k=3)
    assert not {"m0", "m1"} & set(ids)                # seen items excluded
    again = Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "export")))
    assert torch.equal(again.scores(users), rec.scores(users))


def test_sparse_matrix_equals_the_dataframe():
    sp = pytest.importorskip("scipy.sparse")
    X, df, _ = _frame(1)
    a = recsys.fit(sp.csr_matrix(X), model="itemknn", k=5)
    df_int = pd.DataFrame({"user": np.nonzero(X)[0], "item": np.nonzero(X)[1]})
    b = recsys.fit(df_int, model="itemknn", k=5)
    assert a.users.ids == b.users.ids and a.items.ids == b.items.ids
    assert torch.equal(a.scores(a.users.ids), b.scores(a.users.ids))


def test_every_kind_and_a_blend_fit(tmp_path):
    _, df, items = _frame(2)
    kw = dict(items=items, user_col="who", item_col="what")
    for model in ("popularity", "itemknn", "userknn", "content_knn", "ease",
                  {"kind": "blend", "alpha": 0.5, "norm": "max", "first": {"kind": "ease", "lam": 5.0},
                   "second": {"kind": "content_knn", "k": 5}}):
        rec = recsys.fit(df, model=model, **kw)
        ids, scores = rec.recommend(["u1", "u2"], k=3)
        assert ids.shape == (2, 3) and np.isfinite(scores).all(), model


def test_learned_model_trains_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, df, items = _frame(3, U=30, I=20)
    rec = recsys.fit(df, items=items, model="hybrid", dim=8, max_epochs=2, user_col="who", item_col="what")
    assert rec.scorer.config.variant == "hybrid" and not rec.scorer.training
    assert os.listdir(tmp_path) == []                 # no logs, no checkpoints
    ids, _ = rec.recommend("u3", k=5)
    assert len(ids) == 5
    again = Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "export")))
    torch.testing.assert_close(again.scores(["u3"]), rec.scores(["u3"]))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(model="ease", lamda=3.0), ValueError, "lamda"),
    (dict(model="nope"), ValueError, "unknown model kind 'nope'"),
    (dict(model="hybrid", max_epochs=0), ValueError, "max_epochs=0 trains nothing"),
    (dict(model="ease", device="tpu"), ValueError, "device='tpu'"),
    (dict(model="ease", user_col="nobody"), ValueError, "nobody"),
])
def test_bad_arguments_are_one_line_errors(kwargs, error, words):
    _, df, _ = _frame()
    df = df.rename(columns={"who": "user", "what": "item"})
    with pytest.raises(error, match=words):
        recsys.fit(df, **kwargs)


def test_not_a_frame_is_a_type_error():
    with pytest.raises(TypeError, match="DataFrame or a scipy sparse matrix"):
        recsys.fit([[1, 2]], model="ease")


def test_search_from_python_picks_on_validation_and_refits_on_everything(tmp_path, monkeypatch):
    """recsys.fit(search=...): the winner of the grid is recorded with the model, and the final
    EASE is fitted on every interaction (its scores are the closed form over all of X)."""
    monkeypatch.chdir(tmp_path)
    X, df, items = _frame(5, U=40, I=15)
    rec = recsys.fit(df, items=items, model="ease", user_col="who", item_col="what",
                     search={"trials": 3, "sampler": "grid", "space": {"lam": {"choices": [0.5, 5.0, 50.0]}}})
    lam = rec.meta["search"]["params"]["lam"]
    assert lam in (0.5, 5.0, 50.0) and rec.meta["model"]["lam"] == lam
    assert rec.meta["refit"]["n_train"] == int(X.sum())
    ref = recsys.fit(df, items=items, model="ease", lam=lam, user_col="who", item_col="what")
    users = [f"u{a}" for a in range(5)]
    torch.testing.assert_close(rec.scores(users), ref.scores(users))
    assert os.listdir(tmp_path) == []


def test_learned_fit_is_refit_on_every_interaction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X, df, items = _frame(6, U=30, I=20)
    rec = recsys.fit(df, items=items, model="collaborative", dim=8, max_epochs=2, user_col="who", item_col="what")
    assert rec.meta["refit"]["n_train"] == int(X.sum()) and 1 <= rec.meta["refit"]["epochs"] <= 2
    kept = recsys.fit(df, items=items, model="collaborative", dim=8, max_epochs=2, user_col="who", item_col="what",
                      refit=False)
    assert "refit" not in kept.meta


def test_the_refit_chooses_its_own_fold_in_lambda(tmp_path, monkeypatch):
    """The MF fold-in weight was chosen on the first fit and kept for the refit, whose embeddings
    are others (top-1 agreement with the stored user fell from 50/50 to 30/50): the refit model's
    lambda is the one that reproduces its own learned users best."""
    import copy

    from recsys.train.tune import FOLD_IN_GRID, choose_fold_in_by_agreement
    monkeypatch.chdir(tmp_path)
    X, df, items = _frame(6, U=40, I=24)
    rec = recsys.fit(df, items=items, model="collaborative", dim=8, max_epochs=3, user_col="who", item_col="what")
    m = rec.scorer
    best, curve = choose_fold_in_by_agreement(copy.deepcopy(m), rec.seen)
    assert set(curve) == set(FOLD_IN_GRID) and m.config.fold_in_lambda == best
    assert curve[best] == max(curve.values()) and rec.meta["model"]["fold_in_lambda"] == "auto"


def test_a_matrix_keeps_its_shape():
    """Empty rows and columns of a given matrix are users and items (recsys.fit dropped them:
    an item with no interaction could never be recommended, though it is in the shape)."""
    import scipy.sparse as sp
    X = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 1, 0, 0],
                  [1, 1, 0, 0, 0]], dtype=np.float32)                      # user 2 and items 3, 4: empty
    rec = recsys.fit(sp.csr_matrix(X), model="popularity")
    assert rec.users.ids == list(range(6)) and rec.items.ids == list(range(5))
    ids, _ = rec.recommend(0, k=5, exclude_seen=False)
    assert sorted(ids.tolist()) == [0, 1, 2, 3, 4]                        # the empty items are there
    assert rec.recommend(2, k=2)[0].shape == (2,)                          # and so is the empty user
    ease = recsys.fit(sp.csr_matrix(X), model="ease", lam=1.0)
    assert ease.scores([0]).shape == (1, 5)
