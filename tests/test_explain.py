"""Explanations (models/explain.py): contributions that add up to the score where the model is
additive, hand-computed top contributors, -1 padding, batch == single."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.models.blend import Blend
from recsys.models.coldstart import fill_matrix
from recsys.models.explain import explain
from recsys.models.knn import ItemKNN
from recsys.models.memory import MemoryConfig
from recsys.models.registry import fit_memory
from recsys.sparse.similarity import select_rows

from helpers import random_csr, random_scorer

U, I, T = 8, 7, 6
COLD = 6                                  # item 6: no interaction, a content neighbour fill


def _data(seed: int = 0):
    """Random ratings (U, I) with item COLD never interacted with, and random token bags."""
    rng = np.random.default_rng(seed)
    X = (rng.random((U, I)) < 0.5) * rng.uniform(1, 5, (U, I))
    X[:, COLD] = 0
    X[np.arange(U), rng.integers(0, COLD, U)] = 2.5            # nobody empty
    pairs = np.argwhere(X > 0)
    hist = (torch.from_numpy(np.concatenate([[0], np.cumsum((X > 0).sum(1))]).astype(np.int64)),
            torch.from_numpy(pairs[:, 1]), torch.from_numpy(X[X > 0]).float())
    tp, ti, _ = random_csr(rng, I, T, 4)
    tw = torch.from_numpy(rng.uniform(0.1, 1.0, len(ti))).float()
    return X, hist, (tp, ti, tw)


def _fit(kind: str, seed: int = 0, cold_k: int = 0, **cfg):
    X, hist, tok = _data(seed)
    c = MemoryConfig(kind, U, I, values="rating", cold_k=cold_k, **cfg)
    fill = fill_matrix(*tok, T, torch.from_numpy(X.sum(0) > 0), cold_k) if cold_k else None
    return fit_memory(c, *hist, *tok, n_tokens=T, fill=fill)


def _all_items(b: int) -> torch.Tensor:
    return torch.arange(I).expand(b, -1).clone()                 # every (row, item) pair


def _scores(model, who):
    with torch.no_grad():
        return model.score(who, model.item_side())


USERS = torch.arange(U)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("kind,cfg", [
    ("itemknn", {"direction": "candidate"}), ("itemknn", {"direction": "history"}),
    ("itemknn", {"direction": "candidate", "normalize": True}), ("itemknn", {"direction": "history", "normalize": True}),
    ("ease", {"lam": 2.0}), ("content_knn", {}), ("content_knn", {"direction": "history", "normalize": True}),
    ("content_knn", {"similarity": "jaccard"})])
def test_memory_contributions_add_up_to_the_score(kind, cfg):
    """Sum over all history items (top large enough) == model.score for every (user, item), with
    the cold item's borrowed score included (itemknn, ease); content_knn's tokens too."""
    cold_k = 0 if kind == "content_knn" else 2
    model = _fit(kind, k=3, cold_k=cold_k, **cfg)
    e = explain(model, None, _all_items(U), top=I, users=USERS)
    want = _scores(model, USERS)
    assert e.exact
    torch.testing.assert_close(e.item_weight.sum(-1), want, atol=1e-5, rtol=0)
    if cold_k:
        assert want[:, COLD].abs().sum() > 0                     # the fill is exercised
    if kind == "content_knn":
        torch.testing.assert_close(e.token_weight.sum(-1), want, atol=1e-5, rtol=0)
    else:
        assert e.token_idx is None and e.user_idx is None
    # given histories (the model's rows) give the same as the known users
    H = select_rows(model._hist(), USERS)
    e2 = explain(model, H, _all_items(U), top=I)
    torch.testing.assert_close(e2.item_weight, e.item_weight)
    assert torch.equal(e2.item_idx, e.item_idx)


def _hand_itemknn(direction: str, normalize: bool) -> ItemKNN:
    """One user with items 0, 1, 2 rated 1, 2, 1; hand-set W (5 x 5)."""
    W = {0: {3: 0.2}, 1: {3: 0.05}, 2: {3: 0.7}, 3: {0: 0.5, 1: 0.3, 2: 0.4}, 4: {0: 0.3}}
    indptr = torch.tensor([0] + list(np.cumsum([len(W[r]) for r in range(5)])))
    cols = torch.tensor([c for r in range(5) for c in W[r]])
    vals = torch.tensor([v for r in range(5) for v in W[r].values()])
    cfg = MemoryConfig("itemknn", 1, 5, values="rating", direction=direction, normalize=normalize)
    return ItemKNN(cfg, {"hist_indptr": torch.tensor([0, 3]), "hist_indices": torch.tensor([0, 1, 2]),
                         "hist_values": torch.tensor([1.0, 2.0, 1.0]),
                         "w_indptr": indptr, "w_indices": cols, "w_values": vals})


@pytest.mark.parametrize("direction,normalize,want_idx,want_w", [
    # candidate: c_j = x_j W[3, j] = 0.5, 0.6, 0.4
    ("candidate", False, [1, 0, 2, -1], [0.6, 0.5, 0.4, 0.0]),
    ("candidate", True, [1, 0, 2, -1], [0.6 / 1.2, 0.5 / 1.2, 0.4 / 1.2, 0.0]),
    # history: c_j = x_j W[j, 3] = 0.2, 0.1, 0.7
    ("history", False, [2, 0, 1, -1], [0.7, 0.2, 0.1, 0.0]),
    ("history", True, [2, 0, 1, -1], [0.7 / 0.95, 0.2 / 0.95, 0.1 / 0.95, 0.0])])
def test_itemknn_hand_computed_order_and_padding(direction, normalize, want_idx, want_w):
    model = _hand_itemknn(direction, normalize)
    e = explain(model, None, torch.tensor([[3, 4]]), top=4, users=torch.tensor([0]))
    assert e.item_idx[0, 0].tolist() == want_idx
    torch.testing.assert_close(e.item_weight[0, 0], torch.tensor(want_w))
    # item 4: one contributor (candidate: W[4, 0]), none in the history direction; -1 padded
    want4 = ([0, -1, -1, -1], [0.3 / (0.3 if normalize else 1.0), 0, 0, 0]) if direction == "candidate" \
        else ([-1] * 4, [0.0] * 4)
    assert e.item_idx[0, 1].tolist() == want4[0]
    torch.testing.assert_close(e.item_weight[0, 1], torch.tensor(want4[1]))
    torch.testing.assert_close(e.item_weight.sum(-1), _scores(model, torch.tensor([0]))[:, [3, 4]])


def test_ease_padding_when_the_history_is_shorter_than_top():
    model = _fit("ease", lam=1.0)
    H = torch.sparse_csr_tensor(torch.tensor([0, 2]), torch.tensor([1, 4]), torch.tensor([1.0, 1.0]), (1, I))
    e = explain(model, H, torch.tensor([[0, 2]]), top=3)
    B = model.ease_B
    for slot, i in enumerate((0, 2)):
        c = {1: float(B[1, i]), 4: float(B[4, i])}
        order = sorted(c, key=lambda j: -abs(c[j]))
        assert e.item_idx[0, slot].tolist() == order + [-1]
        torch.testing.assert_close(e.item_weight[0, slot], torch.tensor([c[j] for j in order] + [0.0]))


@pytest.mark.parametrize("normalize", [False, True])
def test_userknn_neighbour_votes_add_up(normalize):
    """Contributors are neighbour users; known users (W rows) and new histories both add up."""
    model = _fit("userknn", k=3, cold_k=2, normalize=normalize)
    e = explain(model, None, _all_items(U), top=U, users=USERS)
    assert e.exact and (e.item_idx == -1).all() and e.user_idx is not None
    torch.testing.assert_close(e.user_weight.sum(-1), _scores(model, USERS), atol=1e-5, rtol=0)
    H = torch.sparse_csr_tensor(torch.tensor([0, 2, 5]), torch.tensor([0, 3, 1, 2, 5]), torch.ones(5), (2, I))
    e = explain(model, H, _all_items(2), top=U)
    torch.testing.assert_close(e.user_weight.sum(-1), _scores(model, H), atol=1e-5, rtol=0)
    assert not (e.user_idx[:, :, 0] == -1).all()


def test_popularity_has_no_contributors():
    model = _fit("popularity")
    e = explain(model, None, torch.tensor([[0, 1]]), users=torch.tensor([0]))
    assert not e.exact and (e.item_idx == -1).all() and (e.item_weight == 0).all() and e.token_idx is None


def test_learned_content_history_and_tokens_add_up():
    """c_j = C_j . C_i / |H(u)| and w(i, t) (P . E_t) both sum to s_ct = P . C_i; hand-computed top."""
    s = random_scorer("content", empty_users={4})
    users = torch.arange(9)
    items = torch.arange(13).expand(9, -1).clone()
    e = explain(s, None, items, top=13, users=users)
    want = _scores(s, users)
    assert e.exact
    torch.testing.assert_close(e.item_weight.sum(-1), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(e.token_weight.sum(-1), want, atol=1e-5, rtol=0)
    assert (e.item_idx[4] == -1).all()                           # an empty history: nothing
    with torch.no_grad():
        C = s.item_content()
        for u in (0, 3):
            h = s.hist_indices[s.hist_indptr[u]:s.hist_indptr[u + 1]]
            c = C[h] @ C[5] / len(h)
            assert int(e.item_idx[u, 5, 0]) == int(h[c.abs().argmax()])


def test_learned_collaborative_gives_the_nearest_history_items_by_cosine():
    s = random_scorer("collaborative")
    e = explain(s, None, torch.tensor([[2, 7]]), top=5, users=torch.tensor([1]))
    assert not e.exact and e.token_idx is None
    V = torch.nn.functional.normalize(s.item_emb.weight.detach(), dim=1)
    h = s.hist_indices[s.hist_indptr[1]:s.hist_indptr[2]]
    for slot, i in enumerate((2, 7)):
        cos = V[h] @ V[i]
        order = torch.argsort(cos.abs(), descending=True)
        assert e.item_idx[0, slot, :len(h)].tolist() == h[order].tolist()
        torch.testing.assert_close(e.item_weight[0, slot, :len(h)], cos[order])


def test_hybrid_top_item_hand_computed_and_sums_up_to_a_row_constant():
    s = random_scorer("hybrid", alpha=0.3)
    users = torch.arange(9)
    items = torch.arange(13).expand(9, -1).clone()
    e = explain(s, None, items, top=13, users=users)
    assert not e.exact
    with torch.no_grad():
        V, b, C = s.item_emb.weight, s.item_bias, s.item_content()
        Vn = torch.nn.functional.normalize(V, dim=1)
        s_cf = s.user_emb.weight @ V.T + b
        z_cf = (s_cf - s_cf.mean(1, keepdim=True)) / (s_cf.std(1, keepdim=True) + 1e-8)
        score = s(users)
        for u in range(9):
            h = s.hist_indices[s.hist_indptr[u]:s.hist_indptr[u + 1]]
            P = C[h].mean(0)
            s_ct = C @ P
            k2 = 0.7 / (s_ct.std() + 1e-8)
            for i in range(13):
                cos = (Vn[h] @ Vn[i]).clamp(min=0)
                share = cos / cos.sum() if cos.sum() > 0 else cos          # no positive cosine: cf left out
                w = k2 * (C[h] @ C[i]) / len(h) + 0.3 * z_cf[u, i] * share
                assert int(e.item_idx[u, i, 0]) == int(h[w.abs().argmax()])
                if cos.sum() > 0:     # everything but the content mean is attributed
                    torch.testing.assert_close(e.item_weight[u, i].sum(), score[u, i] + k2 * s_ct.mean(),
                                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("norm", ["max", "zscore"])
def test_blend_scales_each_part_and_adds_up_where_it_should(norm):
    """Blend(itemknn, ease): a c1_j f1 + (1 - a) c2_j f2 per history item; with norm=max the sum
    is the blend score (exact); with zscore, the score plus the unattributed offsets."""
    first, second = _fit("itemknn", k=3), _fit("ease", lam=2.0)
    a = 0.4
    blend = Blend(first, second, a, norm)
    e = explain(blend, None, _all_items(U), top=I, users=USERS)
    assert e.exact == (norm == "max")
    X = torch.from_numpy(_data()[0]).float()
    W, B = first._W().to_dense(), second.ease_B
    s1, s2 = _scores(first, USERS), _scores(second, USERS)
    if norm == "max":
        f1, f2, off = 1 / s1.abs().amax(1), 1 / s2.abs().amax(1), 0.0
    else:
        (d1, m1), (d2, m2) = torch.std_mean(s1, dim=1), torch.std_mean(s2, dim=1)
        f1, f2 = 1 / (d1 + 1e-8), 1 / (d2 + 1e-8)
        off = (a * m1 * f1 + (1 - a) * m2 * f2)[:, None]
    torch.testing.assert_close(e.item_weight.sum(-1), _scores(blend, USERS) + off, atol=1e-5, rtol=0)
    for u in range(U):
        ref = X[u][None, :] * (a * f1[u] * W + (1 - a) * f2[u] * B.T)          # (items i, history j)
        for i in range(I):
            want = int(ref[i].abs().argmax()) if ref[i].abs().max() > 0 else -1     # cold item 6: none
            assert int(e.item_idx[u, i, 0]) == want


@pytest.mark.parametrize("make", [
    lambda: _fit("itemknn", k=3, cold_k=2, normalize=True), lambda: _fit("ease", cold_k=2),
    lambda: _fit("content_knn", k=3), lambda: _fit("userknn", k=3),
    lambda: random_scorer("hybrid", n_users=U, n_items=I), lambda: Blend(_fit("itemknn", k=3), _fit("content_knn", k=3), 0.5)])
def test_batch_equals_single_rows(make):
    model = make()
    items = torch.tensor([[6, 1, 3], [0, 2, 5], [4, 3, 1], [5, 6, 0]])
    users = torch.tensor([0, 3, 5, 7])
    full = explain(model, None, items, top=3, users=users)
    for r in range(4):
        one = explain(model, None, items[r:r + 1], top=3, users=users[r:r + 1])
        for name in ("item", "token", "user"):
            ids, w = getattr(full, f"{name}_idx"), getattr(full, f"{name}_weight")
            if ids is None:
                assert getattr(one, f"{name}_idx") is None
                continue
            assert torch.equal(getattr(one, f"{name}_idx")[0], ids[r])
            torch.testing.assert_close(getattr(one, f"{name}_weight")[0], w[r], atol=1e-6, rtol=1e-5)


def test_missing_items_are_explained_as_nothing():
    model = _fit("ease")
    e = explain(model, None, torch.tensor([[2, -1]]), top=2, users=torch.tensor([0]))
    assert (e.item_idx[0, 1] == -1).all() and (e.item_weight[0, 1] == 0).all()
    assert (e.item_idx[0, 0] >= 0).any()
    with pytest.raises(ValueError, match="top"):
        explain(model, None, torch.tensor([[2]]), top=0, users=torch.tensor([0]))


def test_explain_takes_a_bounded_number_of_contributors():
    """explain=303051820 allocated (b, k, top) tensors until the HTTP request timed out (found by
    tests/test_fuzz_http.py): a count past MAX_EXPLAIN, a negative one or a string is refused."""
    import pandas as pd
    import recsys
    from recsys.serve.request import MAX_EXPLAIN
    df = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [10, 11, 10, 12, 11]})
    rec = recsys.fit(df, model="itemknn", k=2)
    ids, scores, why = rec.recommend(1, k=1, explain=MAX_EXPLAIN)
    assert ids.tolist() == [12] and {i for i, _ in why[0]["items"]} <= {10, 11} and why[0]["items"]
    for bad in (MAX_EXPLAIN + 1, 303051820, -1, "3"):
        with pytest.raises(ValueError, match=r"explain=.* must be True, False or a number of contributors 0\.\.100"):
            rec.recommend(1, k=1, explain=bad)
        with pytest.raises(ValueError, match="explain="):
            rec.recommend_for_history([10], k=1, explain=bad)
    assert len(rec.recommend(1, k=1, explain=0)) == 2
