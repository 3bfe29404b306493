"""The per-request ranking API of Recommender (serve/request.py, models/similar.py): batch and
single calls give the same ranking up to float32 rounding (helpers.same_ranking), candidates, exclusions and attribute filters, k above what is
allowed, similar items and users, explanations; known answers on tiny hand-made data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import recsys
from helpers import same_ranking

N_USERS, N_ITEMS = 40, 24
GENRES = ["Comedy", "Drama|Action", "Action", "Sci-Fi|Comedy"]


def _data(seed: int = 0):
    """Binary interactions with heavy ties: items 2m and 2m + 1 are always taken together, so
    they score the same for every model that only sees co-occurrence."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        for m in rng.choice(N_ITEMS // 2, size=int(rng.integers(2, 6)), replace=False):
            rows += [(u, 2 * int(m)), (u, 2 * int(m) + 1)]
    inter = pd.DataFrame(rows, columns=["user", "item"])
    items = pd.DataFrame({"item": range(N_ITEMS + 2),            # items 24 and 25: cold, text only
                          "title": [f"movie {i} word{i % 5}" for i in range(N_ITEMS + 2)],
                          "genres": [GENRES[i % 4] for i in range(N_ITEMS + 2)]})
    return inter, items


MODELS = {
    "ease": dict(model="ease"),
    "itemknn_dense": dict(model="itemknn", dense_ratio=1e9),      # every column heavy: the GEMM path
    "itemknn": dict(model="itemknn"),
    "userknn_dense": dict(model="userknn", dense_ratio=1e9),
    "content_knn": dict(model="content_knn"),
    "popularity": dict(model="popularity"),
    "blend": dict(model={"kind": "blend", "alpha": 0.8, "norm": "max", "first": {"kind": "ease"},
                         "second": {"kind": "content_knn"}}),
    "hybrid": dict(model="hybrid", max_epochs=2),
    "collaborative": dict(model="collaborative", max_epochs=2),
}


@pytest.fixture(scope="module")
def recs():
    inter, items = _data()
    return {name: recsys.fit(inter, items, **kw) for name, kw in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_batch_equals_single_with_ties(recs, name):
    """1 user vs 2 vs all: the same ranking up to float32 rounding (BLAS sums in another order
    for another row count: AVX2 vs AVX-512, GEMV vs GEMM), exact ties by item index."""
    rec = recs[name]
    users = list(range(N_USERS))
    all_ids, all_sc = rec.recommend(users, k=8)
    for u in (0, 1, 17, N_USERS - 1):
        one_ids, one_sc = rec.recommend(u, k=8)
        same_ranking(one_ids, one_sc, all_ids[u], all_sc[u])
    two_ids, two_sc = rec.recommend([5, 6], k=8)
    for r in range(2):
        same_ranking(two_ids[r], two_sc[r], all_ids[5 + r], all_sc[5 + r])
    # ties are real here: some row holds equal neighbouring scores, ordered by item index
    if name in ("ease", "itemknn", "itemknn_dense", "userknn_dense"):
        tied = [(r, j) for r in range(N_USERS) for j in range(7) if all_sc[r, j] == all_sc[r, j + 1]]
        assert tied
        assert all(rec.items.index([all_ids[r, j]])[0] < rec.items.index([all_ids[r, j + 1]])[0] for r, j in tied)
    # the same for histories and similar items
    h = [[0, 1, 6, 7], [2, 3]]
    hb, hs = rec.recommend_for_history(h, k=6)
    h0, s0 = rec.recommend_for_history(h[0], k=6)
    same_ranking(h0, s0, hb[0], hs[0])
    qb, qs = rec.similar_items(list(range(N_ITEMS)), k=5)
    q3, s3 = rec.similar_items(3, k=5)
    same_ranking(q3, s3, qb[3, :len(q3)], qs[3, :len(s3)])


def test_same_ranking_catches_a_real_difference():
    """The tolerance helper itself: rounding-level swaps pass, real differences fail."""
    same_ranking([3, 1, 2], [1.0, 0.5, 0.5 + 1e-7], [3, 2, 1], [1.0, 0.5 + 1e-7, 0.5])
    for ids, sc in (([3, 2, 1], [1.0, 0.5, 0.4]), ([3, 1, 2], [1.0, 0.5, 0.49]), ([3, 1, 9], [1.0, 0.5, 0.5])):
        with pytest.raises(AssertionError):
            same_ranking([3, 1, 2], [1.0, 0.5, 0.4], ids, sc)


@pytest.mark.parametrize("name", list(MODELS))
def test_candidates_score_as_the_full_ranking(recs, name):
    """candidates=: only they come back, with the full ranking's scores, in its order (items=,
    their old name, gives the same with a DeprecationWarning)."""
    rec = recs[name]
    cand = [1, 4, 5, 9, 12, 13, 20, 25]
    ids, sc = rec.recommend([0, 3], k=4, candidates=cand)
    with pytest.warns(DeprecationWarning, match="items= is now candidates="):
        old = rec.recommend([0, 3], k=4, items=cand)
    assert np.array_equal(old[0], ids)
    with pytest.raises(TypeError, match="pass candidates= only"):
        rec.recommend(0, k=4, items=cand, candidates=cand)
    full = rec.scores([0, 3]).numpy()
    seen = rec.seen
    for r, u in enumerate([0, 3]):
        s_items = set(rec.items.ids[j] for j in seen[1][seen[0][u]:seen[0][u + 1]].tolist())
        allowed = [c for c in cand if c not in s_items]
        want = sorted(allowed, key=lambda c: (-full[r, rec.items.index([c])[0]], rec.items.index([c])[0]))
        got = [x for x in ids[r] if x != -1]
        assert set(got) <= set(allowed) and len(got) == min(4, len(allowed))
        np.testing.assert_allclose(sc[r, :len(got)], [full[r, rec.items.index([c])[0]] for c in got], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sorted(sc[r, :len(got)], reverse=True),
                                   [full[r, rec.items.index([c])[0]] for c in want[:len(got)]], rtol=1e-5, atol=1e-5)


def test_exclude_where_and_shorter_lists(recs):
    rec = recs["ease"]
    ids, _ = rec.recommend(0, k=30)
    assert len(ids) == N_ITEMS + 2 - int(rec.seen[0][1] - rec.seen[0][0])      # all allowed, never a seen item
    gone = ids[:3].tolist()
    ex, _ = rec.recommend(0, k=5, exclude=gone)
    assert not set(gone) & set(ex) and list(ex) == [x for x in ids if x not in gone][:5]
    a, _ = rec.recommend([0, 1], k=5)
    per, _ = rec.recommend([0, 1], k=5, exclude=[[a[0, 0]], [a[1, 0], a[1, 1]]])
    assert per[0, 0] == a[0, 1] and per[1, 0] == a[1, 2]
    # where: a word of the field, case-insensitive; lists are ORs, several keys ANDs
    comedy, _ = rec.recommend(0, k=30, where={"genres": "comedy"})
    assert comedy.size and all(GENRES[i % 4] in ("Comedy", "Sci-Fi|Comedy") for i in comedy)
    either, _ = rec.recommend(0, k=30, where={"genres": ["sci-fi", "drama"]})
    assert either.size and all(i % 4 in (1, 3) for i in either)
    both, _ = rec.recommend(0, k=30, where={"genres": "comedy", "title": "word2"})
    assert all(i % 4 in (0, 3) and i % 5 == 2 for i in both)
    assert set(both) == {i for i in ids if i % 4 in (0, 3) and i % 5 == 2}
    # a filter that leaves nothing: an empty answer, a batch of empty rows
    none, s = rec.recommend(0, k=5, where={"genres": "western"})
    assert none.size == 0 and s.size == 0
    nb, sb = rec.recommend([0, 1], k=5, where={"genres": "western"})
    assert nb.shape == (2, 0)


def test_bad_arguments_name_themselves(recs):
    rec = recs["itemknn"]
    with pytest.raises(KeyError, match="exclude: unknown id"):
        rec.recommend(0, k=3, exclude=[999])
    with pytest.raises(KeyError, match=r"exclude\[1\]: unknown id"):
        rec.recommend([0, 1], k=3, exclude=[[1], [999]])
    with pytest.raises(ValueError, match="exclude: 3 lists for 2 row"):
        rec.recommend([0, 1], k=3, exclude=[[1], [2], [3]])
    with pytest.raises(KeyError, match="candidates: unknown id"):
        rec.recommend(0, k=3, candidates=[1, "x"])
    with pytest.raises(KeyError, match="where: no item attribute 'color'"):
        rec.recommend(0, k=3, where={"color": "red"})
    with pytest.raises(ValueError, match="k=-1 must be >= 1"):
        rec.similar_items(1, k=-1)
    with pytest.raises(KeyError, match="items: unknown id"):
        rec.similar_items([1, 999])
    with pytest.raises(ValueError, match="space='weights' is not a similarity space of itemknn items"):
        rec.similar_items(1, space="weights")
    with pytest.raises(KeyError, match="users: unknown id"):
        rec.similar_users(["nobody"])


def test_similar_items_known_answers(recs):
    inter, items = _data()
    X = np.zeros((N_USERS, N_ITEMS + 2))
    X[inter.user, inter.item] = 1
    norms = np.linalg.norm(X, axis=0)
    cos = (X.T @ X) / np.maximum(np.outer(norms, norms), 1e-12)
    # ItemKNN: its neighbour list = the cosine of the user columns (k=100 keeps them all), query left out
    ids, sc = recs["itemknn"].similar_items(4, k=50)
    order = [j for j in np.lexsort((np.arange(N_ITEMS + 2), -cos[4])) if j != 4 and cos[4, j] > 0]
    assert list(ids) == order and np.allclose(sc, cos[4, order], atol=1e-6)
    assert ids[0] == 5 and sc[0] == pytest.approx(1.0)                        # its twin
    # "history" gives the same cosines for any model
    h_ids, h_sc = recs["ease"].similar_items(4, k=5, space="history")
    assert h_ids[0] == 5 and np.allclose(h_sc, np.sort(np.delete(cos[4], 4))[::-1][:5], atol=1e-6)
    # EASE: column q of B
    B = recs["ease"].scorer.ease_B.numpy()
    e_ids, e_sc = recs["ease"].similar_items(6, k=4)
    col = B[:, 6].copy()
    col[6] = -np.inf
    assert list(e_ids) == list(np.lexsort((np.arange(len(col)), -col))[:4]) and np.allclose(e_sc, np.sort(col)[::-1][:4])
    # learned: cosine of the item vectors as ranked (cold rows prepared)
    rec = recs["collaborative"]
    V = rec.scorer.item_side().V.detach().numpy()
    Vn = V / np.linalg.norm(V, axis=1, keepdims=True)
    c = Vn @ Vn[2]
    c[2] = -np.inf
    l_ids, l_sc = rec.similar_items(2, k=5)
    assert np.allclose(l_sc, np.sort(c)[::-1][:5], atol=1e-5)
    # a cold item (no interaction) has token neighbours
    t_ids, t_sc = recs["hybrid"].similar_items(24, k=3, space="tokens")
    assert len(t_ids) == 3 and 24 not in t_ids and (t_sc > 0).all()
    ck_ids, _ = recs["content_knn"].similar_items(25, k=3)
    assert len(ck_ids) == 3 and 25 not in ck_ids


def test_similar_users_known_answers(recs):
    inter, _ = _data()
    X = np.zeros((N_USERS, N_ITEMS + 2))
    X[inter.user, inter.item] = 1
    n = np.linalg.norm(X, axis=1)
    cos = (X @ X.T) / np.outer(n, n)
    for name in ("ease", "userknn_dense"):           # history cosine; UserKNN's neighbour lists (cosine, k=100)
        ids, sc = recs[name].similar_users([3, 8], k=4)
        for r, u in enumerate([3, 8]):
            c = cos[u].copy()
            c[u] = -np.inf
            assert u not in ids[r]
            assert np.allclose(sc[r], np.sort(c)[::-1][:4], atol=1e-6)
    one, _ = recs["ease"].similar_users(3, k=4, exclude=[int(ids[0][0])])
    assert ids[0][0] not in one
    pool = [1, 2, 5, 7, 9]                            # candidates: only these, in the cosine order
    some, sc = recs["ease"].similar_users(3, k=3, candidates=pool)
    want = sorted(pool, key=lambda v: (-cos[3, v], v))[:3]
    assert some.tolist() == want and np.allclose(sc, cos[3, want], atol=1e-6)


def test_explain_through_the_recommender(recs):
    """ItemKNN's explanation weights add up to the score (all contributors asked for)."""
    rec = recs["itemknn"]
    ids, sc, ex = rec.recommend(0, k=3, explain=50)
    for s, e in zip(sc, ex):
        assert sum(w for _, w in e["items"]) == pytest.approx(float(s), abs=1e-5)
    hid, hsc, hex_ = rec.recommend_for_history([[0, 1], [6]], k=2, explain=True)
    assert len(hex_) == 2 and all(len(e["items"]) <= 3 for row in hex_ for e in row)
    assert all(j in (0, 1) for _, e in zip(hid[0], hex_[0]) for j, _ in e["items"])


def test_attributes_survive_export_and_add_items(recs, tmp_path):
    rec = recs["content_knn"]
    path = rec.save_pretrained(str(tmp_path / "export"))
    back = recsys.Recommender.from_pretrained(path)
    assert back.attributes == rec.attributes and set(back.attributes) == {"title", "genres"}
    assert np.array_equal(back.recommend(0, k=5, where={"genres": "action"})[0],
                          rec.recommend(0, k=5, where={"genres": "action"})[0])
    back.add_items(pd.DataFrame({"item": [100], "title": ["movie 100 word3"], "genres": ["Western"]}))
    ids, _ = back.recommend(0, k=5, where={"genres": "western"})
    assert list(ids) == [100]


def test_diversity_per_call(recs):
    """diversity= re-ranks through the same path: strength 0 keeps the model's order, batch ==
    single, a changed order keeps the same candidates' scores, bad values name themselves."""
    rec = recs["ease"]
    base_ids, base_sc = rec.recommend([0, 1, 2], k=5)
    same = rec.recommend([0, 1, 2], k=5, diversity={"method": "mmr", "strength": 0.0})
    assert np.array_equal(same[0], base_ids) and np.array_equal(same[1], base_sc)
    for d in ({"method": "mmr", "strength": 0.9}, {"method": "popularity", "strength": 2.0}):
        b_ids, b_sc = rec.recommend([0, 1, 2], k=5, diversity=d)
        one_ids, one_sc = rec.recommend(1, k=5, diversity=d)
        assert np.array_equal(b_ids[1], one_ids) and np.array_equal(b_sc[1], one_sc)
        full = rec.scores([0, 1, 2]).numpy()
        for r in range(3):                           # the scores are the model's own, of the kept items
            assert np.allclose(b_sc[r], full[r, rec.items.index(b_ids[r].tolist())])
    assert not np.array_equal(rec.recommend([0, 1, 2], k=5, diversity={"method": "mmr", "strength": 0.9})[0], base_ids)
    with pytest.raises(ValueError, match=r"diversity.strength=1.5 is outside \[0, 1\]"):
        rec.recommend(0, k=5, diversity={"method": "mmr", "strength": 1.5})
    with pytest.raises(ValueError, match="diversity.method='fancy'"):
        rec.recommend(0, k=5, diversity={"method": "fancy"})
    with pytest.raises(ValueError, match="calibration has no genres"):
        rec.recommend(0, k=5, diversity={"method": "calibration", "strength": 0.5})


def test_evaluate_measures_the_reranked_lists(recs):
    """Recommender.evaluate(diversity=...) (what evaluate.py diversity.* calls): strength 0 gives
    the plain metrics, a strong MMR the metrics of its own lists."""
    rec = recs["ease"]
    users, items = [0, 1, 2, 3], [6, 7, 8, 9]
    plain, _ = rec.evaluate(users, items, ks=[5])
    zero, _ = rec.evaluate(users, items, ks=[5], diversity={"method": "mmr", "strength": 0.0})
    assert plain == zero
    strong, _ = rec.evaluate(users, items, ks=[5], diversity={"method": "mmr", "strength": 0.95})
    lists, _ = rec.recommend(users, k=5, diversity={"method": "mmr", "strength": 0.95})
    hits = [float(i in set(row)) for i, row in zip(items, lists)]
    seen_of = {u: set(rec.seen[1][rec.seen[0][u]:rec.seen[0][u + 1]].tolist()) for u in users}
    kept = [h for h, u, i in zip(hits, users, items) if i not in seen_of[u]]
    assert strong["test/recall@5"] == pytest.approx(sum(kept) / len(kept))


def test_a_huge_catalog_cuts_the_chunk_to_the_block_bound(monkeypatch):
    """The score block of a chunk stays within MAX_BLOCK_FLOATS whatever chunk_size says (a
    million items would otherwise take 4 GB a 1,024-user chunk), with the same lists."""
    import torch
    from recsys.eval import ranking
    from recsys.models.popularity import Popularity
    from recsys.models.memory import MemoryConfig
    hist = torch.tensor([0, 1, 1, 2, 3, 3, 3]), torch.tensor([0, 2, 2, 1, 4, 0, 1])
    indptr = torch.tensor([0, 1, 3, 4, 7, 7])
    model = Popularity.fit(MemoryConfig(kind="popularity", n_users=5, n_items=6), indptr, hist[1])
    users = torch.arange(5)
    want = [(r.tolist(), i.tolist()) for r, i, _ in ranking.rank(model, users, 3, chunk_size=4)]
    monkeypatch.setattr(ranking, "MAX_BLOCK_FLOATS", 12)          # 2 rows of 6 items a block
    got = [(r.tolist(), i.tolist()) for r, i, _ in ranking.rank(model, users, 3, chunk_size=4)]
    assert [len(r) for r, _ in got] == [2, 2, 1]
    assert [x for r, _ in got for x in r] == [x for r, _ in want for x in r]
    assert [x for _, i in got for x in i] == [x for _, i in want for x in i]
