"""The new-user protocol: held-out users never reach training, and every scorer scores a
history it is handed at inference exactly as it scores a known user with that history."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.train.build import build_memory, build_scorer, csr, eval_sets, new_user_sets
from recsys.data.prepare import prepare_movielens
from recsys.eval.evaluation import evaluate
from recsys.sparse.similarity import select_rows
from recsys.data.splits import NEW_GIVEN, NEW_TARGET, new_users_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = {"kind": "newusers", "new": 0.1, "given": 0.5, "valid": 0.1, "test": 0.1, "seed": 3}


def test_new_users_split_labels():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(0, 100, 4000), "item": rng.integers(0, 300, 4000)}).drop_duplicates()
    lab = new_users_split(df, new=0.2, given=0.3, seed=1)
    assert np.array_equal(lab, new_users_split(df, new=0.2, given=0.3, seed=1))
    by_user = pd.DataFrame({"user": df["user"].to_numpy(), "lab": lab}).groupby("user")["lab"]
    new = by_user.apply(lambda x: bool((x >= NEW_GIVEN).all()))
    assert new.sum() == 20                                              # 20% of 100 users
    assert not by_user.apply(lambda x: bool((x >= NEW_GIVEN).any() and (x < NEW_GIVEN).any())).any()
    for u in new[new].index:
        x = by_user.get_group(u).to_numpy()
        assert (x == NEW_GIVEN).sum() >= 1 and (x == NEW_TARGET).sum() >= 1


@pytest.fixture(scope="module")
def prep():
    return prepare_movielens(os.path.join(ROOT, "data", "ml-latest-small"), split=SPLIT)


def test_new_users_never_reach_training(prep):
    """No new user is in the training vocabulary, none of their ratings is in train/valid/test,
    and every tag they wrote is dropped from the item text."""
    assert prep.new_users is not None and len(prep.new_users) == 61
    assert not set(prep.new_users.ids) & set(prep.users.ids)
    assert len(prep.new_given) > 0 and len(prep.new_target) > 0
    tags = pd.read_csv(os.path.join(ROOT, "data", "ml-latest-small", "tags.csv"))
    by_new = int(tags["userId"].isin(set(prep.new_users.ids)).sum())
    assert by_new > 0 and prep.report["tags_dropped_as_leaks"] >= by_new


KINDS = [{"kind": "itemknn", "k": 20}, {"kind": "itemknn", "k": 20, "direction": "history"},
         {"kind": "content_knn", "k": 20}, {"kind": "ease", "lam": 100.0}, {"kind": "popularity"},
         {"kind": "blend", "alpha": 0.7, "norm": "max", "first": {"kind": "itemknn", "k": 20},
          "second": {"kind": "content_knn", "k": 20}}]


def _assert_history_scores_equal_known_user_scores(scorer, prep):
    users = torch.arange(0, prep.n_users, 37)
    side = scorer.item_side()
    hist = csr(prep.train, prep.n_users)
    H = torch.sparse_csr_tensor(*hist, torch.ones(len(hist[1])), (prep.n_users, prep.n_items))
    torch.testing.assert_close(scorer.score(select_rows(H, users), side),
                               scorer.score(users, side), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m["kind"] + m.get("direction", ""))
def test_history_scores_equal_known_user_scores_memory(prep, model):
    """Handing a known user's own training history to score_histories gives its score_users."""
    _assert_history_scores_equal_known_user_scores(build_memory(prep, model), prep)


def test_history_scores_equal_known_user_scores_learned_content(prep):
    torch.manual_seed(0)
    _assert_history_scores_equal_known_user_scores(build_scorer(prep, variant="content", dim=16), prep)


def test_fold_in_known_answer(prep):
    """Orthonormal item vectors: u = (V_H^T V_H + lam I)^-1 V_H^T 1 puts 1 / (1 + lam) on the
    history's items and 0 elsewhere; an empty history gives 0."""
    scorer = build_scorer(prep, variant="collaborative", dim=8)
    V = torch.eye(8)
    H = torch.tensor([[1, 0, 1, 0, 0, 0, 0, 0], [0] * 8, [0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.float32).to_sparse_csr()
    u = scorer.fold_in(H, V, lam=1.0, sub=2)
    want = torch.tensor([[0.5, 0, 0.5, 0, 0, 0, 0, 0], [0] * 8, [0, 0, 0, 0, 0, 0, 0, 0.5]])
    torch.testing.assert_close(u, want)


def test_fold_in_equals_one_solve_per_user(prep):
    """Sub-batches taken in order of history length (long and short histories, empty rows,
    sub 3) give each user the plain solve of their own normal equations."""
    scorer = build_scorer(prep, variant="collaborative", dim=8)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(30, 5, generator=g)
    lens = [0, 12, 1, 7, 0, 30, 2, 2, 9, 1]
    dense = torch.zeros(len(lens), 30)
    for u, n in enumerate(lens):
        dense[u, torch.randperm(30, generator=g)[:n]] = 1.0
    u = scorer.fold_in(dense.to_sparse_csr(), V, lam=0.7, sub=3)
    for r, n in enumerate(lens):
        Vh = V[dense[r] > 0]
        want = torch.linalg.solve(Vh.T @ Vh + 0.7 * torch.eye(5), Vh.sum(0)) if n else torch.zeros(5)
        torch.testing.assert_close(u[r], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["collaborative", "hybrid"])
def test_new_user_evaluation_runs_for_learned_models(prep, variant):
    torch.manual_seed(0)
    scorer = build_scorer(prep, variant=variant, dim=16)
    new = new_user_sets(prep)
    m, per = evaluate(scorer, new["target"], new["given"], [10], 16, "test/new_users/", histories=new["given"])
    assert m["test/new_users/users"] == 61 and 0 <= m["test/new_users/ndcg@10"] <= 1
    assert len(per["ndcg@10"]) == 61


def test_new_user_ranking_masks_the_given_history(prep):
    """Items handed as history never come back in the top K (they are masked)."""
    scorer = build_memory(prep, {"kind": "popularity"})
    new = new_user_sets(prep)
    from recsys.eval.ranking import mask_seen, topk_rows
    H = torch.sparse_csr_tensor(new["given"][0], new["given"][1], torch.ones(len(new["given"][1])),
                                (len(prep.new_users), prep.n_items))
    users = torch.arange(len(prep.new_users))
    s = scorer.score_histories(select_rows(H, users), scorer.item_side())
    mask_seen(s, users, *new["given"])
    _, top = topk_rows(s, 50)
    for u in range(len(users)):
        given = set(new["given"][1][new["given"][0][u]:new["given"][0][u + 1]].tolist())
        assert not given & set(top[u].tolist())


def test_recommend_for_history_matches_a_known_user(tmp_path, prep):
    """Recommender.recommend_for_history(a known user's training items) == recommend(user) for
    ItemKNN, in a reloaded export; unknown ids are refused or ignored as asked; batches work."""
    from recsys import Recommender
    from recsys.serve.export import save_export
    scorer = build_memory(prep, {"kind": "itemknn", "k": 20})
    sets = eval_sets(prep)
    # exclude exactly the training items, so that both calls mask the same set
    train_seen = sets["val_seen"]
    path = save_export(str(tmp_path / "export"), scorer, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       train_seen, torch.from_numpy(prep.bags.idf))
    rec = Recommender.from_pretrained(path)
    for u in (0, 5, 40):
        hist = [prep.items.ids[j] for j in prep.train[prep.train[:, 0] == u, 1]]
        ids_h, sc_h = rec.recommend_for_history(hist, k=10)
        ids_u, sc_u = rec.recommend(prep.users.ids[u], k=10)
        np.testing.assert_allclose(sc_h, sc_u, atol=1e-5)
        assert not set(ids_h.tolist()) & set(hist)
    with pytest.raises(KeyError, match="unknown item"):
        rec.recommend_for_history(hist + ["no such movie"], k=5)
    ids, _ = rec.recommend_for_history(hist + ["no such movie"], k=5, unknown="ignore")
    assert len(ids) == 5
    # nothing known: refused, naming the history, unless asked to rank it by popularity
    with pytest.raises(ValueError, match=r"history\[2\]: no item of the catalog to rank from \(it is empty\)"):
        rec.recommend_for_history([hist, hist[:3], []], k=4)
    with pytest.raises(ValueError, match=r"^history: no item of the catalog .*every id in it is unknown"):
        rec.recommend_for_history(["no such movie"], k=4, unknown="ignore")
    ids, sc = rec.recommend_for_history([hist, hist[:3], []], k=4, empty="popular")
    assert ids.shape == (3, 4) and sc.shape == (3, 4)
    pop, pop_sc = rec.recommend("no such user", k=4, unknown="popular", exclude_seen=False)
    assert ids[2].tolist() == pop.tolist() and sc[2].tolist() == pop_sc.tolist() and pop_sc[0] > 0
    ids1, sc1 = rec.recommend_for_history([hist, hist[:3]], k=4)
    assert np.array_equal(ids[:2], ids1) and np.allclose(sc[:2], sc1)


def test_fold_in_lambda_is_chosen_on_validation_and_used(prep):
    """choose_fold_in_lambda evaluates each lambda on known users folded in from their train
    history (validation targets only), keeps the best, and score_histories then uses it."""
    from recsys.train.tune import choose_fold_in_lambda
    torch.manual_seed(0)
    s = build_scorer(prep, variant="collaborative", dim=8).eval()
    sets = eval_sets(prep)
    best, curve = choose_fold_in_lambda(s, sets["val_seen"], sets["val_target"], grid=(0.01, 1.0, 100.0))
    assert set(curve) == {0.01, 1.0, 100.0} and curve[best] == max(curve.values())
    assert s.config.fold_in_lambda == best
    H = torch.sparse_csr_tensor(*sets["val_seen"], torch.ones(len(sets["val_seen"][1])), (prep.n_users, prep.n_items))
    rows = select_rows(H, torch.arange(5))
    a = s.score_histories(rows, s.item_side())
    s.config.fold_in_lambda = 1000.0
    assert not torch.allclose(a, s.score_histories(rows, s.item_side()))
    # the curve is what evaluate gives for that lambda, known users folded in from their history
    s.config.fold_in_lambda = 1.0
    m, _ = evaluate(s, sets["val_target"], sets["val_seen"], ks=(10,), prefix="", histories=sets["val_seen"])
    assert m["ndcg@10"] == pytest.approx(curve[1.0])


@pytest.mark.parametrize("model", [{"kind": "content_knn", "k": 30}, {"kind": "itemknn", "k": 10},
                                   {"kind": "userknn", "k": 5},
                                   {"kind": "ease", "lam": 10.0},
                                   {"kind": "blend", "alpha": 0.8, "norm": "max", "first": {"kind": "ease", "lam": 10.0},
                                    "second": {"kind": "content_knn", "k": 30}}],
                         ids=lambda m: m["kind"])
def test_recommend_for_history_known_answer(tmp_path, model):
    """A newcomer who watched three 'space' films gets only 'space' films first, and a
    'cooking' fan only 'cooking' films, through the exported Recommender (batch form)."""
    from recsys import Recommender
    from recsys.train.build import csr
    from recsys.serve.export import save_export
    from tests.test_add_items import _taste_files
    prep = _taste_files(str(tmp_path))
    m = build_memory(prep, model)
    path = save_export(str(tmp_path / "export"), m, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       csr(prep.train, prep.n_users), torch.from_numpy(prep.bags.idf), prep.item_titles)
    rec = Recommender.from_pretrained(path)
    ids, scores = rec.recommend_for_history([["s1", "s2", "s3"], ["c4", "c5"]], k=10)
    assert ids.shape == (2, 10) and not {"s1", "s2", "s3"} & set(ids[0])
    assert all(i.startswith("s") for i in ids[0]) and all(i.startswith("c") for i in ids[1])
    one, _ = rec.recommend_for_history(["s1", "s2", "s3"], k=10)
    assert list(one) == list(ids[0])


def test_userknn_new_user_known_answer():
    """UserKNN for a user outside the model: cosine to every known user (numpy reference), the
    k most similar, their histories summed with those weights."""
    from recsys.models.memory import MemoryConfig
    from recsys.models.registry import fit_memory
    rng = np.random.default_rng(0)
    U, I, k = 12, 9, 3
    X = (rng.random((U, I)) < 0.4).astype(np.float32)
    X[0] = 0                                                    # a known user with no history
    rows, cols = np.nonzero(X)
    indptr = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(X.sum(1).astype(np.int64), out=indptr[1:])
    m = fit_memory(MemoryConfig(kind="userknn", n_users=U, n_items=I, k=k),
                   torch.from_numpy(indptr), torch.from_numpy(cols.astype(np.int64)))
    h = np.zeros((2, I), dtype=np.float32)
    h[0, [1, 4, 6]] = 1
    h[1, [0, 2]] = 1
    H = torch.tensor(h).to_sparse_csr()
    got = m.score_histories(H, m.item_side())
    norms = np.linalg.norm(X, axis=1)
    for r in range(2):
        sim = X @ h[r] / np.where(norms > 0, norms, 1) / np.linalg.norm(h[r])
        top = np.argsort(-sim, kind="stable")[:k]
        top = top[sim[top] > 0]
        ref = (sim[top, None] * X[top]).sum(0)
        np.testing.assert_allclose(got[r].numpy(), ref, atol=1e-5)
