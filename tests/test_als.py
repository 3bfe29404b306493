"""ALS training of the collaborative tables (recsys/train/als.py, model=als)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import recsys
from recsys import Recommender
from recsys.train.als import als_loss, solve_side

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(seed=0, n=30, m=40, D=4):
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(n, m, generator=g) < 0.2
    P[0] = False                                                   # a row with no interaction
    indptr = torch.zeros(n + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(P.sum(1), 0)
    cols = P.nonzero(as_tuple=True)[1]
    X = torch.randn(n, D, generator=g, dtype=torch.float64)
    Y = torch.randn(m, D, generator=g, dtype=torch.float64)
    return P, indptr, cols, X, Y


def test_conjugate_gradient_reaches_each_rows_exact_solve():
    """Known answer: enough CG steps give x_u = (Y^T C_u Y + reg I)^-1 Y^T C_u p_u per row,
    computed row by row with numpy-free dense algebra (C_u = 1 + alpha at u's items, else 1)."""
    P, indptr, cols, X, Y = _problem()
    alpha, reg = 5.0, 0.3
    solve_side(X, Y, indptr, cols, alpha, reg, steps=50, block=7)    # blocks of 7 rows: the block loop too
    C = 1 + alpha * P.double()
    for u in range(len(X)):
        A = Y.T @ (C[u][:, None] * Y) + reg * torch.eye(Y.shape[1], dtype=torch.float64)
        want = torch.linalg.solve(A, Y.T @ (C[u] * P[u].double()))
        torch.testing.assert_close(X[u], want, atol=1e-8, rtol=1e-8)
    assert torch.equal(X[0], torch.zeros_like(X[0])) or float(X[0].abs().max()) < 1e-8   # no items: 0


def test_the_loss_is_the_dense_objective_and_falls_every_iteration():
    P, indptr, cols, X, Y = _problem(1)
    alpha, reg = 3.0, 0.1
    C = 1 + alpha * P.double()
    dense = (C * (P.double() - X @ Y.T) ** 2).sum() + reg * (X.pow(2).sum() + Y.pow(2).sum())
    assert als_loss(X, Y, indptr, cols, alpha, reg) == pytest.approx(float(dense), rel=1e-12)
    by_item = P.T.contiguous()
    iptr = torch.zeros(by_item.shape[0] + 1, dtype=torch.long)
    iptr[1:] = torch.cumsum(by_item.sum(1), 0)
    icols = by_item.nonzero(as_tuple=True)[1]
    losses = []
    for _ in range(5):                                              # 3 CG steps a side, as the default
        solve_side(X, Y, indptr, cols, alpha, reg, steps=3)
        solve_side(Y, X, iptr, icols, alpha, reg, steps=3)
        losses.append(als_loss(X, Y, indptr, cols, alpha, reg))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def _frame():
    rng = np.random.default_rng(0)
    X = rng.random((40, 25)) < 0.3
    X[:, 0] = True
    u, i = np.nonzero(X)
    return pd.DataFrame({"user": u, "item": i})


def test_model_als_trains_exports_and_folds_in_new_users(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = recsys.fit(_frame(), model="als", dim=8, max_epochs=4)
    s = rec.scorer
    assert s.variant == "collaborative" and s.item_bias is None and not s.training
    assert rec.meta is not None
    again = Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "export")))
    torch.testing.assert_close(again.scores([3]), rec.scores([3]))
    ids, _ = rec.recommend_for_history([0, 1, 2], k=5)               # a user outside the model: fold-in
    assert len(ids) == 5 and not {0, 1, 2} & set(ids.tolist())


def test_the_als_estimator_has_the_config_files_values():
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "model", "als.yaml")))
    p = recsys.ALS().get_params()
    for k, v in cfg.items():
        if k in ("_target_", "_convert_", "kind", "search_space"):
            continue
        if k == "optim":
            assert {kk: p["optim"][kk] for kk in v} == v
        else:
            assert p[k] == v, k


@pytest.mark.parametrize("model, words", [
    ({"kind": "hybrid", "optim": {"solver": "als"}}, "trains the collaborative or mf_tokens variant without item bias"),
    ({"kind": "collaborative", "optim": {"solver": "als"}}, "item_bias=True"),
    ({"kind": "als", "optim": {"reg": 0.0}}, "reg=0.0 > 0"),
    ({"kind": "als", "optim": {"solver": "lbfgs"}}, "solver='lbfgs' must be 'adam'"),
])
def test_bad_solver_settings_are_one_line_errors(model, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        recsys.fit(_frame(), model=model, max_epochs=1)


def test_the_token_table_step_is_the_exact_least_squares():
    """Known answer: enough CG steps give the token table E that minimises, over the warm items,
    sum_u c (p - u . (V_i + (W E)_i))^2 + reg |E|^2: the dense normal equations over vec(E)."""
    from recsys.train.als import solve_tokens
    g = torch.Generator().manual_seed(5)
    n_u, I, T, D, dt = 25, 20, 8, 3, torch.float64
    P = torch.rand(n_u, I, generator=g) < 0.25
    P[:, -2:] = False                                              # two items with no interaction
    warm = P.any(0)
    alpha, reg = 4.0, 0.5
    U = torch.randn(n_u, D, generator=g, dtype=dt)
    Wd = (torch.rand(I, T, generator=g) < 0.4).double() * torch.rand(I, T, generator=g, dtype=dt)
    iptr = torch.zeros(I + 1, dtype=torch.long)
    iptr[1:] = torch.cumsum(P.T.sum(1), 0)
    icol = P.T.nonzero(as_tuple=True)[1]
    V = torch.randn(I, D, generator=g, dtype=dt) * warm[:, None]
    E = torch.randn(T, D, generator=g, dtype=dt)
    W, WT = Wd.to_sparse_csr(), Wd.T.contiguous().to_sparse_csr()
    # the residual the item rows' solve hands over (b - A (V + W E) for its new V) starts the token
    # solve exactly where the token solve's own pass would
    V2, E2, rest = V.clone(), E.clone(), torch.empty(I, D, dtype=dt)
    solve_side(V2, U, iptr, icol, alpha, reg, 3, offset=W @ E2, rest=rest)
    V2[~warm] = 0.0
    E3 = E2.clone()
    solve_tokens(E2, U, V2, W, WT, iptr, icol, warm, alpha, reg, 2, rest)
    solve_tokens(E3, U, V2, W, WT, iptr, icol, warm, alpha, reg, 2)
    torch.testing.assert_close(E2, E3, atol=1e-9, rtol=1e-9)
    solve_tokens(E, U, V, W, WT, iptr, icol, warm, alpha, reg, 200)
    C = 1 + alpha * P.double()
    M, rhs = reg * torch.eye(T * D, dtype=dt), torch.zeros(T * D, dtype=dt)
    for i in torch.nonzero(warm).flatten().tolist():
        A = U.T @ (C[:, i][:, None] * U)
        M += torch.kron(torch.outer(Wd[i], Wd[i]), A)
        rhs += torch.kron(Wd[i], U.T @ (C[:, i] * P[:, i].double()) - A @ V[i])
    torch.testing.assert_close(E, torch.linalg.solve(M, rhs).view(T, D), atol=1e-10, rtol=1e-10)


def test_als_tokens_ranks_new_items_by_their_tokens_and_its_loss_falls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = _frame()
    items = pd.DataFrame({"item": range(25), "title": [f"film {'red' if k % 2 else 'blue'} {k % 5}" for k in range(25)]})
    losses = []
    rec = recsys.fit(df, items=items, model="als_tokens", dim=8, max_epochs=6, refit=False,
                     on_epoch=lambda epoch, m: losses.append(m["train/loss"]))
    s = rec.scorer
    assert s.variant == "mf_tokens" and s.item_tokens and s.token_emb.weight.abs().sum() > 0
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:])), losses
    assert rec.add_items(pd.DataFrame({"item": [99], "title": ["film red 3"]})) == 1
    V, _ = rec.scorer.item_rows()
    torch.testing.assert_close(V[-1], rec.scorer.item_content()[-1])            # a new item: its tokens alone
    assert float(V[-1].abs().sum()) > 0 and 99 in rec.recommend(0, k=rec.scorer.config.n_items, exclude_seen=False)[0]
    again = Recommender.from_pretrained(rec.save_pretrained(str(tmp_path / "export")))
    torch.testing.assert_close(again.scores([3]), rec.scores([3]))


def test_mf_tokens_trains_with_adam_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    items = pd.DataFrame({"item": range(25), "title": [f"film {k % 3}" for k in range(25)]})
    rec = recsys.fit(_frame(), items=items, model="mf_tokens", dim=8, max_epochs=2)
    assert rec.scorer.variant == "mf_tokens" and len(rec.recommend(1, k=4)[0]) == 4
