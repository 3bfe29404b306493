"""One known-answer suite run over every model class of the interface (recsys/models/base.py):
the learned variants, ItemKNN (both directions), UserKNN, ContentKNN, EASE, Popularity, Blend.

On the parity checkerboard (user u has every item of u's parity but u itself, held out):
- the top-1 is the held-out diagonal item (popularity: every item ties, so the lowest unseen index);
- one user, two users and all users ranked at once give the same lists and scores, ties included;
- the export round trip gives bitwise the same scores and lists;
- grown catalogs: covered per kind in test_add_items.py (grown == a fit that had the items);
- histories: a known user's own history handed over as a new user's scores like the user
  (memory-based kinds; the learned MF folds such a user in instead, test_new_users.py; UserKNN
  would find the known user itself among the new user's neighbours, test_new_users.py has its
  own known answer).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys import Recommender
from recsys.eval.ranking import topk
from recsys.serve.export import save_export
from recsys.sparse.csr import csr
from recsys.sparse.similarity import select_rows
from recsys.train.build import build_memory

from helpers import same_ranking
from test_core_checkerboard import N, checkerboard, one_thread, train  # noqa: F401 (fixture)

MODELS = {
    "collaborative": {"learned": "collaborative"}, "content": {"learned": "content"}, "hybrid": {"learned": "hybrid"},
    "itemknn": {"kind": "itemknn", "k": 10}, "itemknn_history": {"kind": "itemknn", "k": 10, "direction": "history"},
    "userknn": {"kind": "userknn", "k": 5}, "content_knn": {"kind": "content_knn", "k": 10},
    "ease": {"kind": "ease", "lam": 1.0}, "popularity": {"kind": "popularity"},
    "ease_lowrank": {"kind": "ease_lowrank", "lam": 1.0, "rank": 64},
    "blend": {"kind": "blend", "alpha": 0.7, "norm": "max", "first": {"kind": "ease", "lam": 1.0},
              "second": {"kind": "content_knn", "k": 10}},
}


# models whose scores of the board's many exactly tied items come out of a GEMM, whose summation
# order follows the block's shape: those ties may break either way (tests/helpers.same_ranking)
GEMM_TIES = {"ease_lowrank"}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return checkerboard(tmp_path_factory.mktemp("board"))


def _model(board, name):
    spec = MODELS[name]
    if "learned" in spec:
        module, _, _ = train(board, spec["learned"], seed=0)
        return module.scorer.eval()
    return build_memory(board, spec)


def _expected_top1(board, name) -> list[int]:
    """Item index of each user's known top-1 (user and item ids are the integers 0..N-1)."""
    diag = board.items.index([board.users.ids[u] for u in range(board.n_users)]).tolist()
    if name != "popularity":
        return diag
    seen = csr(board.train, board.n_users)
    return [min(set(range(board.n_items)) - set(seen[1][seen[0][u]:seen[0][u + 1]].tolist())) for u in range(N)]


@pytest.mark.parametrize("name", MODELS)
def test_contract(board, name, tmp_path):
    model = _model(board, name)
    seen = csr(board.train, board.n_users)
    users = torch.arange(board.n_users)
    with torch.no_grad():
        items, scores = topk(model, users, 3, seen)
    # the known answer
    assert items[:, 0].tolist() == _expected_top1(board, name)
    # one, two and all users at once: the same lists (ties break by item index) and scores (to
    # float rounding: BLAS and the sparse kernel sum in an order that depends on the block shape)
    for chunk in (1, 2, 1000):
        i2, s2 = topk(model, users, 3, seen, chunk_size=chunk)
        if name in GEMM_TIES:          # exact ties in exact arithmetic, summed by GEMM: the promise
            for u in range(len(users)):                          # is the ranking up to rounding
                same_ranking(i2[u], s2[u], items[u], scores[u])
        else:
            assert torch.equal(i2, items), chunk
        torch.testing.assert_close(s2, scores, rtol=1e-6, atol=1e-6)
    # the export round trip: bitwise the same scores and lists through the Recommender
    path = save_export(str(tmp_path / "export"), model, board.users, board.items, board.tokens, board.tokenizer,
                       seen, torch.from_numpy(board.bags.idf), board.item_titles)
    rec = Recommender.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(rec.scorer(users), model.eval()(users))
    ids, sc = rec.recommend(list(board.users.ids), k=3)
    assert np.array_equal(ids, np.asarray(board.items.ids)[items.numpy()]) and np.array_equal(sc, scores.numpy())
    one, one_s = rec.recommend(board.users.ids[3], k=3)
    if name in GEMM_TIES:
        same_ranking(one, one_s, ids[3], sc[3])
    else:
        assert list(one) == list(ids[3])
    np.testing.assert_allclose(one_s, sc[3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, m in MODELS.items() if "learned" not in m and n != "userknn"])
def test_known_users_history_scores_like_the_user(board, name):
    model = _model(board, name)
    seen = csr(board.train, board.n_users)
    H = torch.sparse_csr_tensor(*seen, torch.ones(len(seen[1])), (board.n_users, board.n_items))
    users = torch.tensor([0, 3, 7])
    side = model.item_side()
    with torch.no_grad():
        torch.testing.assert_close(model.score(select_rows(H, users), side), model.score(users, side),
                                   atol=1e-5, rtol=1e-5)
        # and through the ranking path: histories ranked with their own items masked
        a, _ = topk(model, users, 3, seen)
        b, _ = topk(model, users, 3, seen, histories=seen)
    assert torch.equal(a, b)
