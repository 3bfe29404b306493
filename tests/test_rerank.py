"""Diversity re-ranking (recsys/eval/rerank.py): hand-computed picks, the neutral settings keep
the order exactly, masked candidates are never kept, batch == one row at a time bit for bit, and
evaluate() measures the re-ranked lists."""
import math
from types import SimpleNamespace

import pytest
import torch

from recsys.eval import rerank as R
from recsys.eval.evaluation import evaluate
from recsys.eval.ranking import Request, topk

INF = float("-inf")


def csr_of(dense: torch.Tensor):
    X = dense.to_sparse_csr()
    return X.crow_indices(), X.col_indices(), X.values()


def run(rr, scores, idx=None, k=None, rows=None):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    b, c = scores.shape
    idx = torch.arange(c).expand(b, c).clone() if idx is None else idx
    rows = torch.arange(b) if rows is None else rows
    return rr(rows, idx, scores, k or c)


# --- MMR --------------------------------------------------------------------------------------

# item 0 and 1 share a direction (cos 1/sqrt(2)), item 2 is orthogonal to both
V = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_mmr_picks_the_hand_computed_second_item():
    # rel = [1, 0.5, 0]; slot 1: item 0 (highest rel, nothing listed yet)
    # slot 2: lam 0.5: item 1 -> 0.5 * 0.5 - 0.5 * 0.7071 = -0.1036, item 2 -> 0 - 0 = 0: item 2
    #         lam 0.9: item 1 -> 0.45 - 0.0707 = 0.379,  item 2 -> 0: item 1
    s = [[3.0, 2.0, 1.0]]
    assert run(R.MMR(V, 0.5), s)[0].tolist() == [[0, 2, 1]]
    assert run(R.MMR(V, 0.9), s)[0].tolist() == [[0, 1, 2]]
    # the crossover: lam * 0.5 - (1 - lam) / sqrt(2) = 0  <=>  lam = 0.5858
    assert run(R.MMR(V, 0.58), s)[0].tolist() == [[0, 2, 1]]
    assert run(R.MMR(V, 0.59), s)[0].tolist() == [[0, 1, 2]]
    # the returned scores are the model's scores of the kept items
    assert run(R.MMR(V, 0.5), s)[1].tolist() == [[3.0, 1.0, 2.0]]


def test_pool_cosines_match_dense():
    g = torch.Generator().manual_seed(0)
    D = torch.rand(30, 12, generator=g) * (torch.rand(30, 12, generator=g) < 0.3)
    U = torch.nn.functional.normalize(D, dim=1)
    m = R.MMR(D, 0.5)
    idx = torch.randint(0, 30, (70, 6), generator=g)
    S = R.pool_cosines(m.indptr, m.indices, m.values, m.n_cols, idx)            # (70, 6, 6)
    ref = torch.bmm(U[idx], U[idx].transpose(1, 2))
    assert torch.allclose(S, ref, atol=1e-6)


# --- neutral settings keep the order, masked candidates never kept ---------------------------

def _pool(b=23, c=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 5, (b, c), generator=g).float()            # heavy ties
    s, o = torch.sort(s, dim=1, descending=True, stable=True)
    idx = torch.randperm(40, generator=g)[:c].expand(b, c).gather(1, o)
    s[3, 7:] = INF                                                    # a row with few finite candidates
    s[5, :] = INF                                                     # and one with none
    return s, idx


def _rerankers(strength_off: bool):
    g = torch.Generator().manual_seed(2)
    vecs = torch.rand(40, 9, generator=g) * (torch.rand(40, 9, generator=g) < 0.4)
    genres = torch.rand(40, 3, generator=g)
    genres = genres / genres.sum(1, keepdim=True)
    hist = (torch.arange(0, 24 * 3, 3), torch.randint(0, 40, (69,), generator=g))   # 23 rows of 3 items
    counts = torch.randint(0, 50, (40,), generator=g)
    if strength_off:
        return [R.MMR(vecs, 1.0), R.PopularityPenalty(counts, 0.0), R.Calibrated(genres, hist, 0.0)]
    return [R.MMR(vecs, 0.3), R.MMR(vecs, 0.0), R.PopularityPenalty(counts, 2.0), R.Calibrated(genres, hist, 0.7)]


@pytest.mark.parametrize("i", range(3))
def test_neutral_strength_keeps_the_order_exactly(i):
    s, idx = _pool()
    rr = _rerankers(True)[i]
    out_i, out_s = rr(torch.arange(len(s)), idx, s, 8)
    assert torch.equal(out_i, idx[:, :8]) and torch.equal(out_s, s[:, :8])


@pytest.mark.parametrize("i", range(4))
def test_masked_candidates_come_last_in_their_order(i):
    s, idx = _pool()
    rr = _rerankers(False)[i]
    out_i, out_s = rr(torch.arange(len(s)), idx, s, 10)
    for r in range(len(s)):
        n_ok = int(torch.isfinite(s[r]).sum())
        assert torch.isfinite(out_s[r, :min(n_ok, 10)]).all()
        assert set(out_i[r, :min(n_ok, 10)].tolist()) <= set(idx[r, :n_ok].tolist())
        if n_ok < 10:                        # then the masked ones, in their original order
            assert out_i[r, n_ok:].tolist() == idx[r, n_ok:10].tolist()
            assert (out_s[r, n_ok:] == INF).all()
    assert not torch.equal(out_i, idx[:, :10])          # the strength did reorder something


@pytest.mark.parametrize("i", range(4))
def test_batch_equals_one_row_at_a_time(i):
    s, idx = _pool(b=23, c=12, seed=3)
    rr = _rerankers(False)[i]
    rows = torch.arange(len(s))
    full = rr(rows, idx, s, 6)
    one = [rr(rows[r:r + 1], idx[r:r + 1], s[r:r + 1], 6) for r in range(len(s))]
    assert torch.equal(full[0], torch.cat([o[0] for o in one]))
    assert torch.equal(full[1], torch.cat([o[1] for o in one]))
    part = [rr(rows[a:a + 5], idx[a:a + 5], s[a:a + 5], 6) for a in range(0, len(s), 5)]
    assert torch.equal(full[0], torch.cat([p[0] for p in part]))


# --- popularity and calibration, by hand --------------------------------------------------------

def test_popularity_penalty_hand_computed():
    counts = torch.tensor([100, 0, 9, 0])          # pop = log(1 + n) / log(101) = [1, 0, 0.4989, 0]
    s = [[4.0, 3.0, 2.0, 1.0]]                      # rel = [1, 2/3, 1/3, 0]
    # beta 0.5: [0.5, 0.667, 0.084, 0] -> 1, 0, 2, 3; beta 2: [-1, 0.667, -0.665, 0] -> 1, 3, 2, 0
    assert run(R.PopularityPenalty(counts, 0.5), s)[0].tolist() == [[1, 0, 2, 3]]
    assert run(R.PopularityPenalty(counts, 2.0), s)[0].tolist() == [[1, 3, 2, 0]]


def test_calibration_moves_the_list_to_the_users_genre_mix():
    genres = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])    # A, B: genre 0; C, D: genre 1
    hist = (torch.tensor([0, 2]), torch.tensor([0, 3]))                          # one of each: p = [0.5, 0.5]
    s = [[1.0, 0.9, 0.1, 0.0]]                                                   # rel = [1, 0.9, 0.1, 0]
    # a one-genre list: q~ = 0.99 [1, 0] + 0.01 p = [0.995, 0.005]
    kl1 = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)              # 1.958; a balanced list: 0
    # slot 2 after A: B scores (1 - lam) 0.9 - lam kl1, C scores (1 - lam) 0.1: C from lam > 0.8 / (0.8 + kl1)
    cross = 0.8 / (0.8 + kl1)
    assert abs(cross - 0.2901) < 1e-3
    assert run(R.Calibrated(genres, hist, 0.0), s, k=2)[0].tolist() == [[0, 1]]
    assert run(R.Calibrated(genres, hist, cross - 0.01), s, k=2)[0].tolist() == [[0, 1]]
    assert run(R.Calibrated(genres, hist, cross + 0.01), s, k=2)[0].tolist() == [[0, 2]]
    # slot 1 at lam 0.9: A -> 0.1 - 0.9 kl1 beats C -> 0.01 - 0.9 kl1; then C, then D? after A, C:
    # D makes q = [1/3, 2/3] and B [2/3, 1/3]: equal KL, B's rel 0.9 wins
    assert run(R.Calibrated(genres, hist, 0.9), s)[0].tolist() == [[0, 2, 1, 3]]


def test_prefix_distribution_and_item_bags():
    names = ["genres:comedy", "love", "genres:drama", "war"]
    indptr, indices = torch.tensor([0, 3, 4, 4]), torch.tensor([0, 1, 2, 3])
    D, g = R.prefix_distribution((indptr, indices, torch.ones(4)), names)
    assert g == ["genres:comedy", "genres:drama"]
    assert D.tolist() == [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]
    part = SimpleNamespace(tok_indptr=indptr, tok_indices=indices, tok_weights=torch.ones(4))
    assert R.item_bags(SimpleNamespace(first=SimpleNamespace(), second=part))[0] is indptr
    assert R.item_bags(SimpleNamespace()) is None


# --- arguments ----------------------------------------------------------------------------------

def test_bad_arguments_are_one_line_errors_naming_them():
    with pytest.raises(ValueError, match=r"^lam=1.5 is outside \[0, 1\]$"):
        R.MMR(V, 1.5)
    with pytest.raises(ValueError, match=r"^beta=-1 is outside \[0, inf\)$"):
        R.PopularityPenalty(torch.ones(3), -1)
    with pytest.raises(ValueError, match=r"diversity.strength=1.5 is outside \[0, 1\]"):
        R.build("mmr", 1.5, k=10, bags=csr_of(V))
    with pytest.raises(ValueError, match=r"diversity.strength=-0.1 is outside"):
        R.from_config({"method": "calibration", "strength": -0.1}, k=10, genres=torch.ones(3, 1),
                      history=(torch.tensor([0, 0]), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"diversity.method='diverse' is not one of none, mmr, popularity, calibration"):
        R.build("diverse", 0.1, k=10)
    with pytest.raises(ValueError, match=r"diversity.pool=5 must be an integer >= k=10"):
        R.build("popularity", 0.1, k=10, pool=5, counts=torch.ones(3))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lambda'\]"):
        R.from_config({"method": "mmr", "lambda": 0.3}, k=10)
    with pytest.raises(ValueError, match=r"diversity.method=mmr needs the items' token vectors"):
        R.from_config({"method": "mmr", "strength": 0.3}, k=10, model=SimpleNamespace())
    assert R.from_config(None, k=10) == (None, 0)
    assert R.from_config({"method": None, "strength": 0.5}, k=10) == (None, 0)
    rr, pool = R.from_config({"method": "mmr", "strength": 0.25}, k=10, bags=csr_of(V))
    assert isinstance(rr, R.MMR) and rr.lam == 0.75 and pool == 50
    assert R.build("popularity", 3.0, k=20, counts=torch.ones(3))[1] == 100


# --- through the ranking path and evaluate() ------------------------------------------------------

class Table:
    """A model whose scores are a fixed (U, I) table."""
    parallel_chunks = writes_out = False
    device = torch.device("cpu")

    def __init__(self, T):
        self.T, self.config = T, SimpleNamespace(n_items=T.shape[1])

    def item_side(self):
        return None

    def score_columns(self, who, side, cols=None, out=None, ws=None):
        s = self.T[who].clone()
        return s if cols is None else s[:, cols]


def test_evaluate_measures_the_reranked_lists():
    T = torch.tensor([[4.0, 3, 2, 1, 9], [1, 2, 3, 4, 5], [5, 1, 0, 0, 0]])
    seen = (torch.tensor([0, 1, 1, 1]), torch.tensor([4]))                       # user 0 saw item 4
    target = (torch.tensor([0, 1, 3, 4]), torch.tensor([2, 3, 0, 0]))            # {2}, {3, 0}, {0}
    pp = R.PopularityPenalty(torch.tensor([100, 0, 0, 0, 0]), 1.0)              # pop = [1, 0, 0, 0, 0]
    # pools of 4 and rel - pop: u0 items 0..3 [0, 2/3, 1/3, 0] -> [1, 2]; u1 items 4, 3, 2, 1 -> [4, 3];
    # u2 items 0, 1, 2, 3 (ties by index) [0, 0.2, 0, 0] -> [1, 0]
    lists, _ = topk(Table(T), torch.arange(3), 2, seen, request=Request(rerank=pp, pool=4))
    assert lists.tolist() == [[1, 2], [4, 3], [1, 0]]
    beyond = {"train_user_counts": torch.tensor([100, 0, 0, 0, 0]), "n_users": 3}
    m, per = evaluate(Table(T), target, seen, ks=(2,), context={"beyond": beyond}, rerank=pp, pool=4)
    d = 1 / math.log2(3)                                           # a hit at rank 2
    assert per["ndcg@2"].tolist() == pytest.approx([d, d / (1 + d), d])
    assert m["test/ndcg@2"] == pytest.approx((2 * d + d / (1 + d)) / 3)
    assert m["test/recall@2"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["test/coverage@2"] == 1.0                              # items 0..4 all shown
    m0, _ = evaluate(Table(T), target, seen, ks=(2,), context={"beyond": beyond})   # off: [0, 1], [4, 3], [0, 1]
    assert m0["test/ndcg@2"] == pytest.approx((0 + d / (1 + d) + 1) / 3)
    assert m0["test/coverage@2"] == 0.8


def test_ranking_path_chunks_agree():
    g = torch.Generator().manual_seed(4)
    T = torch.randint(0, 6, (9, 30), generator=g).float()              # ties across the cut too
    seen = (torch.arange(0, 28, 3), torch.randint(0, 30, (27,), generator=g))
    vecs = torch.rand(30, 8, generator=g) * (torch.rand(30, 8, generator=g) < 0.4)
    req = Request(rerank=R.MMR(vecs, 0.4), pool=12)
    users = torch.arange(9)
    a = topk(Table(T), users, 5, seen, chunk_size=1, request=req)
    b = topk(Table(T), users, 5, seen, chunk_size=100, request=req)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], topk(Table(T), users, 5, seen)[0])   # re-ranked
