"""Memory-based and closed-form models: known answers, numpy references, chunking, export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys import Recommender
from recsys.train.build import build_memory, eval_sets
from recsys.data.prepare import prepare_files
from recsys.serve.export import save_export
from recsys.models.base import Model
from recsys.models.blend import Blend
from recsys.models.memory import MemoryConfig
from recsys.models.registry import fit_memory
from recsys.eval.ranking import topk
from tests.helpers import write_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KINDS = ["itemknn", "userknn", "content_knn", "ease"]


def _checkerboard(tmp_path, n=20):
    """User u has every item of u's parity except item u itself; items carry a parity token."""
    train = [(u, j) for u in range(n) for j in range(n) if j % 2 == u % 2 and j != u]
    test = [(u, u) for u in range(n)]
    items = [(j, f"{'even' if j % 2 == 0 else 'odd'} tok{j}") for j in range(n)]
    return prepare_files(train=write_csv(tmp_path / "train.csv", ["user", "item"], train),
                         test=write_csv(tmp_path / "test.csv", ["user", "item"], test),
                         items=write_csv(tmp_path / "items.csv", ["item", "text"], items), valid_ratio=0.0)


def _params(kind):
    return {"itemknn": {"k": 10}, "userknn": {"k": 5}, "content_knn": {"k": 10}, "ease": {"lam": 1.0}}[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_checkerboard_top1_is_the_held_out_item(kind, tmp_path):
    """With the diagonal withheld, every user's top-1 (seen items masked) is item u."""
    prep = _checkerboard(tmp_path)
    model = build_memory(prep, {"kind": kind, **_params(kind)})
    sets = eval_sets(prep)
    users = torch.arange(prep.n_users)
    top, _ = topk(model, users, 1, sets["test_seen"])
    expected = prep.items.index([prep.users.ids[u] for u in range(prep.n_users)])
    assert top[:, 0].tolist() == expected.tolist()


def test_ease_equals_the_numpy_closed_form(tmp_path):
    """B = I - P diagMat(1/diag(P)) with P = (X^T X + lambda I)^-1; scores = X B."""
    rng = np.random.default_rng(0)
    X = (rng.random((15, 12)) < 0.3).astype(np.float64)
    X[0, 0] = 1
    pairs = np.argwhere(X > 0)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(X.sum(1))]).astype(np.int64))
    model = fit_memory(MemoryConfig("ease", 15, 12, lam=3.0), indptr, torch.from_numpy(pairs[:, 1]))
    P = np.linalg.inv(X.T @ X + 3.0 * np.eye(12))
    B = np.eye(12) - P / np.diag(P)[None, :]
    got = model(torch.arange(15)).double().numpy()
    np.testing.assert_allclose(got, X @ B, atol=1e-4)
    # row-major: scoring reads rows of B (a column-major B made synth scoring 50x slower)
    assert model.ease_B.is_contiguous()


def test_ease_refuses_a_catalog_past_max_items():
    """EASE is O(items^2): past model.max_items it stops with a message saying why."""
    with pytest.raises(ValueError, match="max_items"):
        fit_memory(MemoryConfig("ease", 2, 50, max_items=10), torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


@pytest.mark.parametrize("direction", ["candidate", "history"])
def test_itemknn_scores_equal_the_sum_over_history_of_neighbour_similarities(direction):
    """candidate: s[u, i] = sum_j x[u, j] W[i, j]; history: sum_j x[u, j] W[j, i]; W[a] the top-k
    cosine neighbours of a (dense reference; real-valued entries so no two similarities tie)."""
    rng = np.random.default_rng(1)
    X = (rng.random((10, 8)) < 0.4) * rng.uniform(1, 5, (10, 8))
    pairs = np.argwhere(X > 0)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum((X > 0).sum(1))]).astype(np.int64))
    k = 3
    model = fit_memory(MemoryConfig("itemknn", 10, 8, k=k, values="rating", direction=direction), indptr,
                             torch.from_numpy(pairs[:, 1]), torch.from_numpy(X[X > 0]))
    n = np.linalg.norm(X, axis=0)
    S = (X.T @ X) / np.where(np.outer(n, n) > 0, np.outer(n, n), 1)
    np.fill_diagonal(S, -np.inf)
    W = np.zeros_like(S)
    for i in range(8):
        nb = np.argsort(-S[i], kind="stable")[:k]
        W[i, nb] = np.where(S[i, nb] > 0, S[i, nb], 0)
    want = X @ W.T if direction == "candidate" else X @ W
    np.testing.assert_allclose(model(torch.arange(10)).double().numpy(), want, atol=1e-5)
    assert not np.allclose(X @ W, X @ W.T)    # the direction matters on this data


@pytest.mark.parametrize("kind", KINDS + ["popularity"])
def test_chunked_equals_unchunked_and_export_round_trips(kind, tmp_path, tiny_files):
    """Ranking in chunks of 1, 7 and all users gives the same lists; the export reloads to
    identical scores and recommendations."""
    prep = prepare_files(train=tiny_files["train"], test=tiny_files["test"], items=tiny_files["items"])
    model = build_memory(prep, {"kind": kind, **({} if kind == "popularity" else _params(kind))})
    sets = eval_sets(prep)
    users = torch.arange(prep.n_users)
    ref_i, ref_s = topk(model, users, 5, sets["test_seen"], chunk_size=prep.n_users)
    for c in (1, 7):
        i, s = topk(model, users, 5, sets["test_seen"], chunk_size=c)
        torch.testing.assert_close(s, ref_s, atol=1e-6, rtol=0)
    path = save_export(str(tmp_path / "export"), model, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       sets["test_seen"], torch.from_numpy(prep.bags.idf))
    rec = Recommender.from_pretrained(path)
    assert torch.equal(rec.scorer(users), model(users))
    ids, _ = rec.recommend(prep.users.ids[:3], k=5)
    assert ids.tolist() == np.asarray(prep.items.ids, dtype=object)[ref_i[:3].numpy()].tolist()


@pytest.mark.parametrize("norm", ["zscore", "max"])
def test_blend_alpha_one_and_zero_rank_like_each_part(tiny_files, norm):
    """alpha = 1 ranks exactly like the first model, alpha = 0 like the second."""
    prep = prepare_files(train=tiny_files["train"], test=tiny_files["test"], items=tiny_files["items"])
    a = build_memory(prep, {"kind": "itemknn", "k": 10})
    b = build_memory(prep, {"kind": "content_knn", "k": 10})
    users = torch.arange(prep.n_users)
    for alpha, part in ((1.0, a), (0.0, b)):
        blend = Blend(a, b, alpha, norm)
        np.testing.assert_array_equal(torch.argsort(blend(users), dim=1, stable=True).numpy()[:, -5:],
                                      torch.argsort(part(users), dim=1, stable=True).numpy()[:, -5:])
    with pytest.raises(ValueError, match="alpha"):
        Blend(a, b, 1.5)
    with pytest.raises(ValueError, match="norm"):
        Blend(a, b, 0.5, "rank")


def test_blend_max_norm_hand_computed():
    """norm=max divides each part by the user's largest absolute score: known answer."""
    class Fixed(Model):
        def __init__(self, S):
            super().__init__()
            self.S = S
            self.config = MemoryConfig("popularity", S.shape[0], S.shape[1])

        def item_side(self):
            return None

        def score_users(self, users, side, out=None, ws=None):
            return self.S[users]
    a = Fixed(torch.tensor([[2.0, -4.0, 0.0], [0.0, 0.0, 0.0]]))
    b = Fixed(torch.tensor([[0.0, 10.0, 5.0], [1.0, 0.0, 0.0]]))
    got = Blend(a, b, 0.25, "max")(torch.arange(2))
    want = torch.tensor([[0.25 * 0.5, 0.25 * -1 + 0.75 * 1, 0.75 * 0.5], [0.75, 0.0, 0.0]])
    torch.testing.assert_close(got, want)


def test_rating_values_change_itemknn(tiny_files):
    """values=rating uses the ratings (different scores from binary); values=binary ignores them."""
    prep = prepare_files(train=tiny_files["train"], test=tiny_files["test"], items=tiny_files["items"])
    assert prep.train_ratings is not None
    users = torch.arange(prep.n_users)
    s_bin = build_memory(prep, {"kind": "itemknn", "k": 10, "values": "binary"})(users)
    s_rat = build_memory(prep, {"kind": "itemknn", "k": 10, "values": "rating"})(users)
    assert not torch.allclose(s_bin, s_rat)


@pytest.mark.parametrize("similarity", ["cosine", "pearson", "jaccard", "euclidean"])
def test_product_budget_cuts_blocks_without_changing_the_result(similarity):
    """Blocks cut by max_products (down to one row per block) give the same neighbours."""
    from recsys.sparse.similarity import topk_neighbours
    rng = np.random.default_rng(3)
    D = (rng.random((30, 25)) < 0.3) * rng.integers(1, 6, (30, 25))
    X = torch.tensor(D, dtype=torch.float32).to_sparse_csr()
    ref = topk_neighbours(X, similarity, k=4, block_size=1000, max_products=10**9)
    got = topk_neighbours(X, similarity, k=4, block_size=1000, max_products=1)
    assert torch.equal(got.crow_indices(), ref.crow_indices())
    torch.testing.assert_close(got.values(), ref.values(), atol=1e-6, rtol=0)


def test_blend_export_round_trip_keeps_norm(tmp_path, tiny_files):
    """A blend (with norm=max) reloads from its export to identical scores and config."""
    prep = prepare_files(train=tiny_files["train"], test=tiny_files["test"], items=tiny_files["items"])
    blend = build_memory(prep, {"kind": "blend", "alpha": 0.7, "norm": "max",
                                "first": {"kind": "itemknn", "k": 10}, "second": {"kind": "content_knn", "k": 10}})
    sets = eval_sets(prep)
    path = save_export(str(tmp_path / "export"), blend, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       sets["test_seen"], torch.from_numpy(prep.bags.idf))
    rec = Recommender.from_pretrained(path)
    assert rec.scorer.config.norm == "max" and rec.scorer.config.alpha == 0.7
    users = torch.arange(prep.n_users)
    assert torch.equal(rec.scorer(users), blend(users))
