"""The Recommender's arguments as careless callers pass them, and add_items under concurrent
readers: the right answer or a one-line error, never a wrong or excluded item."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import recsys


@pytest.fixture(scope="module")
def rec():
    rng = np.random.default_rng(0)
    rows = [(u, int(i)) for u in range(12) for i in rng.choice(10, 4, replace=False)]
    df = pd.DataFrame(rows, columns=["user", "item"])
    items = pd.DataFrame({"item": range(10), "title": [f"film {i} {'red' if i % 2 else 'blue'}" for i in range(10)]})
    return recsys.fit(df, items=items, model="itemknn", k=5)


def test_history_as_series_with_any_index_set_tuple_array(rec):
    want, want_s = rec.recommend_for_history([1, 2], k=3)
    for h in (pd.Series([1, 2], index=[5, 6]), {1, 2}, (1, 2), np.array([1, 2]), pd.Index([1, 2])):
        ids, sc = rec.recommend_for_history(h, k=3)
        assert list(ids) == list(want) and np.array_equal(sc, want_s), type(h)
    ids, _ = rec.recommend_for_history([pd.Series([1, 2], index=[9, 3]), [4]], k=3)
    assert ids.shape == (2, 3) and list(ids[0]) == list(want)


def test_users_as_0d_array_series_none(rec):
    one, s1 = rec.recommend(3, k=3)
    zero_d, s2 = rec.recommend(np.array(3), k=3)
    assert list(one) == list(zero_d) and np.array_equal(s1, s2)
    ids, _ = rec.recommend(pd.Series([3, 4], index=[10, 11]), k=3)
    assert ids.shape == (2, 3) and list(ids[0]) == list(one)
    with pytest.raises(TypeError, match="users must be an id or a list of ids, got None"):
        rec.recommend(None, k=3)
    with pytest.raises(TypeError, match="recommend_for_history takes a history"):
        rec.recommend_for_history(5, k=3)


def test_never_an_excluded_item(rec):
    """k above what a user may still get: one user gets only the items left (finite scores); a
    batch pads the shorter rows with NaN scores and id -1 (integer ids), never a seen item;
    histories over the whole catalog likewise."""
    n = len(rec.items)
    ids, sc = rec.recommend(0, k=n + 5)
    assert len(ids) == n - 4 and np.isfinite(sc).all()
    seen0 = set(rec.items.ids[j] for j in rec.seen[1][rec.seen[0][0]:rec.seen[0][1]].tolist())
    assert not seen0 & set(ids.tolist())
    b_ids, b_sc = rec.recommend([0, 1], k=n)
    n1 = n - (int(rec.seen[0][2]) - int(rec.seen[0][1]))
    assert b_ids.shape == (2, max(n - 4, n1))
    assert (b_ids[0, :n - 4] == ids).all() and (b_sc[0, :n - 4] == sc).all()
    assert np.isnan(b_sc[0, n - 4:]).all() and (b_ids[0, n - 4:] == -1).all()
    ids, sc = rec.recommend_for_history([1, 2, 3], k=n)
    assert len(ids) == n - 3 and not {1, 2, 3} & set(ids) and np.isfinite(sc).all()
    h_ids, h_sc = rec.recommend_for_history([[1, 2, 3], [4]], k=n)
    assert h_ids.shape == (2, n - 1) and (h_ids[0, :n - 3] == ids).all()
    assert np.isnan(h_sc[0, n - 3:]).all() and np.isfinite(h_sc[1]).all() and 4 not in h_ids[1]


def test_evaluate_refuses_unpaired_lists(rec):
    with pytest.raises(ValueError, match="pair up one to one, got 3 users and 2 items"):
        rec.evaluate([0, 1, 2], [5, 6])


def test_add_items_while_others_recommend(monkeypatch):
    """add_items swaps the catalog in one step: 8 reader threads calling recommend and
    recommend_for_history while items are added see the old or the new catalog, never a mix
    (0 errors). The writer's vocabulary is built slowly (20 ms), which widens any window in
    which a reader could see a grown model with the old item list."""
    import time

    from recsys.data.vocab import Vocab
    init = Vocab.__init__

    def slow_init(self, *a, **kw):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.02)
        init(self, *a, **kw)
    rng = np.random.default_rng(1)
    df = pd.DataFrame([(u, int(i)) for u in range(20) for i in rng.choice(15, 5, replace=False)],
                      columns=["user", "item"])
    items = pd.DataFrame({"item": range(15), "title": [f"film {i} {'red' if i % 2 else 'blue'}" for i in range(15)]})
    rec = recsys.fit(df, items=items, model="content_knn", k=5)
    errors, stop = [], threading.Event()
    monkeypatch.setattr(Vocab, "__init__", slow_init)

    def reader(seed):
        r = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                ids, _ = rec.recommend([int(u) for u in r.choice(20, 3)], k=5)
                assert ids.shape == (3, 5)
                k = len(rec.items) - 1                # nearly the whole catalog: new items included
                h, _ = rec.recommend_for_history([int(r.integers(15))], k=k)
                assert len(h) == k
            except Exception as e:      # noqa: BLE001 (any failure counts)
                errors.append(repr(e))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    try:
        for b in range(15):
            rec.add_items(pd.DataFrame({"item": [100 + 2 * b, 101 + 2 * b],
                                        "title": ["film red new", "film blue new"]}))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(rec.items) == 45
