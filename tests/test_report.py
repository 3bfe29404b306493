"""Beyond-accuracy metrics (hand-computed and plain-Python references) and the evaluation
report: history-length slices and cold/warm item slices from one ranking pass."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from recsys.eval.beyond import beyond_accuracy, gini, head_items, intra_list_distance, unit_rows
from recsys.eval.evaluation import bucket_labels, evaluate, restrict_target
from recsys.models.base import Model


def test_hand_computed_beyond_accuracy():
    """Two lists [0, 1] and [0, 2] over 4 items, popularity [3, 1, 0, 0] among 3 users."""
    lists = torch.tensor([[0, 1], [0, 2]])
    V = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 0.0]])
    m = beyond_accuracy(lists, [2], 4, torch.tensor([3, 1, 0, 0]), 3, V.to_sparse_csr(), head_share=0.8)
    assert m["test/coverage@2"] == pytest.approx(3 / 4)
    # counts sorted [0, 1, 1, 2]: sum (2i - n - 1) c_i = 0 - 1 + 1 + 6 = 6; / (n * total = 16)
    assert m["test/gini@2"] == pytest.approx(6 / 16)
    # -log2((pop + 1) / 4): item 0 -> 0, item 1 -> 1, item 2 -> 2; lists average 0.5 and 1
    assert m["test/novelty@2"] == pytest.approx(0.75)
    # head: 3 + 1 interactions reach 0.8 * 4 -> items {0, 1}; one slot of four is tail
    assert m["test/tail@2"] == pytest.approx(0.25)
    # cos(v0, v1) = 0.6 -> 0.4; cos(v0, v2) = 0 -> 1
    assert m["test/ild@2"] == pytest.approx(0.7)


def test_gini_extremes_and_reference():
    assert gini(torch.tensor([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(torch.tensor([0, 0, 0, 8])) == pytest.approx(3 / 4)     # (n - 1) / n for one item
    assert gini(torch.zeros(3)) == 0.0
    rng = np.random.default_rng(0)
    c = rng.integers(0, 50, 200)
    ref = np.abs(c[:, None] - c[None, :]).sum() / (2 * len(c) ** 2 * c.mean())   # mean-difference form
    assert gini(torch.from_numpy(c)) == pytest.approx(ref, abs=1e-9)


def test_head_items_and_cold_items_are_tail():
    # total 21: 10 < 0.5 * 21, 10 + 5 >= it -> two items (ties by lower index)
    h = head_items(torch.tensor([10, 0, 5, 5, 1]), 0.5)
    assert h.tolist() == [True, False, True, False, False]
    assert head_items(torch.tensor([10, 0, 5, 5, 1]), 0.4).tolist() == [True, False, False, False, False]
    h = head_items(torch.tensor([10, 0, 5, 5, 1]), 1.0)
    assert h.tolist() == [True, False, True, True, True]                # a cold item is never head


def test_ild_matches_plain_python_on_random_lists():
    rng = np.random.default_rng(1)
    n_items, T, K = 40, 12, 6
    D = (rng.random((n_items, T)) < 0.3) * rng.random((n_items, T))
    D[3] = 0                                                             # an item without text
    X = torch.tensor(D, dtype=torch.float32).to_sparse_csr()
    U = unit_rows(X.crow_indices(), X.col_indices(), X.values(), T)
    lists = torch.stack([torch.from_numpy(rng.permutation(n_items)[:K]) for _ in range(50)])
    lists[0, 0] = 3
    got = intra_list_distance(lists, U, chunk=7).numpy()
    norms = np.linalg.norm(D, axis=1)
    for u, L in enumerate(lists.tolist()):
        pairs = [(a, b) for a in L for b in L if a != b]
        cos = [0.0 if norms[a] == 0 or norms[b] == 0 else D[a] @ D[b] / (norms[a] * norms[b]) for a, b in pairs]
        assert got[u] == pytest.approx(1 - sum(cos) / len(pairs), abs=1e-6)
    dense = intra_list_distance(lists, U.to_dense(), chunk=11).numpy()     # the dense-table path
    np.testing.assert_allclose(dense, got, atol=1e-6)


@dataclass
class _Cfg:
    n_items: int


class FixedScores(Model):
    """A model with a given (U, I) score matrix."""

    def __init__(self, S: torch.Tensor):
        super().__init__()
        self.S = S
        self.config = _Cfg(S.shape[1])

    def item_side(self):
        return None

    def score_users(self, users, side, out=None, ws=None):
        return self.S[users].clone()


def _csr(lists):
    indptr = torch.tensor([0] + list(np.cumsum([len(x) for x in lists])), dtype=torch.long)
    return indptr, torch.tensor([i for x in lists for i in x], dtype=torch.long)


def test_report_slices_equal_separate_evaluations():
    """Cold/warm item slices equal evaluate() on the restricted targets; history buckets equal the
    per-user means of their users; the overall numbers equal evaluate()."""
    rng = np.random.default_rng(2)
    U, I = 60, 30
    S = torch.from_numpy(rng.random((U, I))).float()
    seen = _csr([sorted(rng.choice(I, rng.integers(1, 25), replace=False).tolist()) for _ in range(U)])
    target = _csr([sorted(set(rng.choice(I, rng.integers(0, 4)).tolist()) - set(seen[1][seen[0][u]:seen[0][u + 1]].tolist()))
                   for u in range(U)])
    cold = torch.zeros(I, dtype=torch.bool)
    cold[rng.choice(I, 8, replace=False)] = True
    hist_len = seen[0][1:] - seen[0][:-1]
    scorer = FixedScores(S)
    rep, per = evaluate(scorer, target, seen, [5, 10], 7, "test/",
                        context={"hist_len": hist_len, "buckets": [5, 20], "item_cold": cold})
    ref, _ = evaluate(scorer, target, seen, [5, 10], 1000, "test/")
    for k, v in ref.items():
        assert rep[k] == pytest.approx(v, abs=1e-12)
    for name, keep in (("cold_items", cold), ("warm_items", ~cold)):
        r, _ = evaluate(scorer, restrict_target(target, keep), seen, [5, 10], 1000, f"test/{name}/")
        assert rep[f"test/{name}/users"] > 0
        for k, v in r.items():
            assert rep[k] == pytest.approx(v, abs=1e-12), k
    labels = bucket_labels([5, 20])
    assert labels == ["1-5", "6-20", "21+"]
    lens = hist_len[per["user"]]
    for b, (lo, hi) in enumerate(((1, 5), (6, 20), (21, 10 ** 9))):
        sel = (lens >= lo) & (lens <= hi)
        assert torch.equal(per["bucket"] == b, sel)
        assert rep[f"test/hist_{labels[b]}/users"] == float(sel.sum())
        if sel.any():
            assert rep[f"test/hist_{labels[b]}/ndcg@10"] == pytest.approx(float(per["ndcg@10"][sel].double().mean()))


def test_worked_example_of_docs_metrics():
    """The worked example table of docs/metrics.md: T = {B, D}, list A B C D E."""
    from recsys.eval.metrics import per_user_metrics
    m = per_user_metrics(torch.tensor([[False, True, False, True, False]]), torch.tensor([2]), [3, 5])
    want = {"recall@3": 0.5, "precision@3": 1 / 3, "hit@3": 1, "mrr@3": 0.5,
            "ndcg@3": (1 / math.log2(3)) / (1 + 1 / math.log2(3)), "map@3": 0.25,
            "recall@5": 1, "precision@5": 0.4, "hit@5": 1, "mrr@5": 0.5,
            "ndcg@5": (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)), "map@5": 0.5}
    for k, v in want.items():
        assert float(m[k][0]) == pytest.approx(v, abs=1e-12), k
    assert float(m["ndcg@3"][0]) == pytest.approx(0.3869, abs=1e-4)
    assert float(m["ndcg@5"][0]) == pytest.approx(0.6509, abs=1e-4)
