"""Top-K metrics: hand-computed cases, a plain-Python reference on random rankings, the hits
matrix against set membership, and full-ranking evaluation against the same reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.eval.evaluation import evaluate
from recsys.eval.metrics import METRICS, hits_matrix, per_user_metrics
from recsys.eval.ranking import topk

from helpers import random_csr, random_scorer

# 1 / log2(j + 1) for ranks j = 1..5
D1, D2, D3, D4, D5 = 1.0, 0.6309297535714575, 0.5, 0.43067655807339306, 0.38685280723454163

HITS = torch.tensor([[0, 1, 0, 1, 1],     # A: |T| = 4, hits at ranks 2, 4, 5
                     [0, 0, 0, 0, 0],     # B: |T| = 1, no hit
                     [1, 0, 0, 0, 0],     # C: |T| = 1, hit at rank 1
                     [0, 0, 1, 0, 0]],    # D: |T| = 2, hit at rank 3
                    dtype=torch.bool)
N_TARGETS = torch.tensor([4, 1, 1, 2])

# expected[metric@K] = [A, B, C, D], worked out by hand
EXPECTED = {
    "recall@1": [0, 0, 1, 0], "recall@3": [1 / 4, 0, 1, 1 / 2], "recall@5": [3 / 4, 0, 1, 1 / 2],
    "precision@1": [0, 0, 1, 0], "precision@3": [1 / 3, 0, 1 / 3, 1 / 3],
    "precision@5": [3 / 5, 0, 1 / 5, 1 / 5],
    "hit@1": [0, 0, 1, 0], "hit@3": [1, 0, 1, 1], "hit@5": [1, 0, 1, 1],
    "mrr@1": [0, 0, 1, 0], "mrr@3": [1 / 2, 0, 1, 1 / 3], "mrr@5": [1 / 2, 0, 1, 1 / 3],
    # A@3: D2 / (D1+D2+D3) = 0.29608;  A@5: (D2+D4+D5) / (D1+D2+D3+D4) = 0.56545
    # D@3 and D@5: D3 / (D1+D2) = 0.30657
    "ndcg@1": [0, 0, 1, 0], "ndcg@3": [0.2960819109658652, 0, 1, 0.3065735963827292],
    "ndcg@5": [0.5654495432396527, 0, 1, 0.3065735963827292],
    # A@3: P@2 / min(4,3) = (1/2)/3;  A@5: (P@2 + P@4 + P@5) / 4 = (1/2 + 1/2 + 3/5) / 4
    # D: P@3 / min(2, K) = (1/3)/2
    "map@1": [0, 0, 1, 0], "map@3": [1 / 6, 0, 1, 1 / 6], "map@5": [0.4, 0, 1, 1 / 6],
}


def test_hand_computed_discounts():
    """The discount constants used in EXPECTED are 1/log2(j+1)."""
    assert [D1, D2, D3, D4, D5] == pytest.approx([1 / math.log2(j + 1) for j in range(1, 6)], rel=1e-12)
    assert EXPECTED["ndcg@3"][0] == pytest.approx(D2 / (D1 + D2 + D3), rel=1e-12)
    assert EXPECTED["ndcg@5"][0] == pytest.approx((D2 + D4 + D5) / (D1 + D2 + D3 + D4), rel=1e-12)


def test_per_user_metrics_hand_computed():
    """Every metric at K = 1, 3, 5 equals the hand-computed value for each of the 4 users."""
    out = per_user_metrics(HITS, N_TARGETS, [1, 3, 5])
    assert set(out) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert out[name].dtype == torch.float64
        np.testing.assert_allclose(out[name].numpy(), want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_per_user_metrics_subset_and_short_lists():
    """`metrics` selects the returned names; lists shorter than max K raise ValueError."""
    out = per_user_metrics(HITS, N_TARGETS, [3], metrics=("ndcg", "hit"))
    assert set(out) == {"ndcg@3", "hit@3"}
    with pytest.raises(ValueError):
        per_user_metrics(HITS, N_TARGETS, [1, 6])


# --- plain-Python reference -------------------------------------------------------------------


def reference(ranked: list, targets: set, k: int) -> dict[str, float]:
    """Each metric from its textbook definition for one user."""
    top = ranked[:k]
    hits = [1 if item in targets else 0 for item in top]
    n = len(targets)
    first = next((j + 1 for j, h in enumerate(hits) if h), None)
    dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
    idcg = sum(1 / math.log2(j + 2) for j in range(min(n, k)))
    ap = sum(sum(hits[:j + 1]) / (j + 1) for j, h in enumerate(hits) if h) / min(n, k)
    return {"recall": sum(hits) / n, "precision": sum(hits) / k, "hit": float(any(hits)),
            "mrr": 0.0 if first is None else 1 / first, "ndcg": dcg / idcg, "map": ap}


def test_per_user_metrics_match_reference_on_random_users():
    """~300 random users, random rankings and target sets: all metrics at K = 1, 5, 10, 20
    agree with the reference to 1e-6."""
    rng = np.random.default_rng(123)
    n_users, n_items, kmax, ks = 300, 60, 20, [1, 5, 10, 20]
    ranked = [rng.permutation(n_items)[:kmax].tolist() for _ in range(n_users)]
    # target sets from 1 to 30 items, some concentrated on the top of the ranking so that
    # many users have several hits
    targets = []
    for u in range(n_users):
        n = int(rng.integers(1, 31))
        pool = ranked[u][:10] + rng.permutation(n_items).tolist() if u % 3 == 0 else rng.permutation(n_items).tolist()
        targets.append(set(list(dict.fromkeys(pool))[:n]))
    hits = torch.tensor([[i in targets[u] for i in ranked[u]] for u in range(n_users)])
    n_t = torch.tensor([len(t) for t in targets])
    out = per_user_metrics(hits, n_t, ks)
    assert hits.any(1).float().mean() > 0.5       # the test is not dominated by zero rows
    for k in ks:
        ref = [reference(ranked[u], targets[u], k) for u in range(n_users)]
        for name in METRICS:
            np.testing.assert_allclose(out[f"{name}@{k}"].numpy(), [r[name] for r in ref],
                                       rtol=0, atol=1e-6, err_msg=f"{name}@{k}")


def test_hits_matrix_matches_set_membership():
    """hits[b, j] = topk[b, j] in targets(users[b]) and n_targets = |targets(users[b])|, for
    users in any order, repeated, or without targets."""
    rng = np.random.default_rng(7)
    n_users, n_items, k = 40, 30, 8
    indptr, indices, lists = random_csr(rng, n_users, n_items, 12, empty_rows={3, 17})
    users = torch.tensor([5, 3, 0, 39, 17, 5, 22, 11, 11, 1])
    top = torch.stack([torch.from_numpy(rng.permutation(n_items)[:k]) for _ in users])
    hits, n_t = hits_matrix(top, users, indptr, indices, n_items)
    want = [[int(i) in set(lists[int(u)]) for i in row] for u, row in zip(users, top)]
    assert hits.dtype == torch.bool
    assert hits.tolist() == want
    assert n_t.tolist() == [len(lists[int(u)]) for u in users]
    assert hits.any()


def test_evaluate_equals_reference_means_for_any_chunk_size():
    """evaluate(): means over users with targets of the reference metrics of the masked
    ranking, the same for chunk sizes 1, 4 and 1000; per-user values come with user ids."""
    scorer = random_scorer("hybrid", n_users=12, n_items=25, seed=3)
    rng = np.random.default_rng(11)
    t_indptr, t_indices, t_lists = random_csr(rng, 12, 25, 4, empty_rows={2, 9})
    seen = (scorer.hist_indptr, scorer.hist_indices)
    users = torch.tensor([u for u in range(12) if t_lists[u]])
    items, _ = topk(scorer, users, 10, seen)
    ref = {f"{m}@{k}": np.mean([reference(items[n].tolist(), set(t_lists[int(u)]), k)[m]
                                for n, u in enumerate(users)])
           for m in METRICS for k in (5, 10)}
    for chunk in (1, 4, 1000):
        means, per_user = evaluate(scorer, (t_indptr, t_indices), seen, ks=(10, 5), chunk_size=chunk)
        assert set(means) == {f"test/{name}" for name in ref} | {"test/users"}
        assert means["test/users"] == len(users)          # rows 2 and 9 have no target
        for name, v in ref.items():
            assert means[f"test/{name}"] == pytest.approx(v, abs=1e-9), (chunk, name)
        assert per_user["user"].tolist() == users.tolist()
        assert len(per_user["ndcg@10"]) == len(users)
