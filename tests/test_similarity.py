"""Tests for recsys/sparse/similarity.py: row-row similarities of a sparse CSR matrix and top-k neighbours,
checked against a plain numpy reference written from the module docstring's definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.sparse.similarity import SIMILARITIES, similarity_matrix, sparse_rows, topk_neighbours

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHRINKS = (0.0, 5.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The matrices are tiny: one intra-op thread avoids thread spin overhead on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# numpy reference: explicit loops over pairs, straight from the definitions
# ----------------------------------------------------------------------------------------------

def _ref_pair(xa: np.ndarray, xb: np.ndarray, similarity: str, shrink: float) -> float:
    """sim(a, b) for two dense rows (missing = 0, support = non-zero entries), in float64."""
    xa, xb = xa.astype(np.float64), xb.astype(np.float64)
    sa, sb = set(np.flatnonzero(xa).tolist()), set(np.flatnonzero(xb).tolist())
    both = sorted(sa & sb)
    co = len(both)
    if similarity == "cosine":
        na, nb = np.sqrt(sum(v * v for v in xa)), np.sqrt(sum(v * v for v in xb))
        dot = sum(xa[c] * xb[c] for c in range(len(xa)))
        sim = dot / (na * nb) if na * nb > 0 else 0.0
    elif similarity == "pearson":
        ma = sum(xa[c] for c in sa) / len(sa) if sa else 0.0
        mb = sum(xb[c] for c in sb) / len(sb) if sb else 0.0
        num = sum((xa[c] - ma) * (xb[c] - mb) for c in both)
        ssa = sum((xa[c] - ma) ** 2 for c in both)
        ssb = sum((xb[c] - mb) ** 2 for c in both)
        sim = num / np.sqrt(ssa * ssb) if ssa * ssb > 0 else 0.0
    elif similarity == "euclidean":
        sim = 1.0 / (1.0 + np.sqrt(sum((xa[c] - xb[c]) ** 2 for c in range(len(xa)))))
    elif similarity == "jaccard":
        union = len(sa | sb)
        sim = co / union if union > 0 else 0.0
    else:
        raise AssertionError(similarity)
    if shrink > 0:
        sim = sim * co / (co + shrink)
    return float(sim)


def ref_matrix(D: np.ndarray, similarity: str, shrink: float = 0.0) -> np.ndarray:
    R = D.shape[0]
    return np.array([[_ref_pair(D[a], D[b], similarity, shrink) for b in range(R)] for a in range(R)])


def csr(D: np.ndarray) -> torch.Tensor:
    return torch.tensor(D, dtype=torch.float32).to_sparse_csr()


def rows_of(W: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(columns, values) of each row of a sparse CSR matrix."""
    crow, col, val = W.crow_indices().numpy(), W.col_indices().numpy(), W.values().numpy()
    return [(col[crow[r]:crow[r + 1]], val[crow[r]:crow[r + 1]]) for r in range(W.shape[0])]


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

EMPTY, DISJ_A, DISJ_B, CONSTANT, SINGLE = 0, 1, 2, 3, 4


def rating_data(seed: int = 0, R: int = 25, C: int = 40, density: float = 0.2) -> np.ndarray:
    """Random integer ratings 1..5 at ~density, with an empty row, two rows with disjoint supports,
    a constant row and a single-entry row (the rows named above)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((R, C)) < density
    D = np.where(mask, rng.integers(1, 6, size=(R, C)), 0).astype(np.float32)
    D[EMPTY] = 0
    D[DISJ_A] = 0
    D[DISJ_A, 0:20:3] = rng.integers(1, 6, size=7)
    D[DISJ_B] = 0
    D[DISJ_B, 20:40:3] = rng.integers(1, 6, size=7)
    D[CONSTANT] = np.where(mask[CONSTANT] | (np.arange(C) % 5 == 0), 4, 0)
    D[SINGLE] = 0
    D[SINGLE, 7] = 3
    return D


def continuous_data(seed: int = 1, R: int = 20, C: int = 60, density: float = 0.5) -> np.ndarray:
    """Random real-valued entries (so similarity values are almost surely distinct), one empty row."""
    rng = np.random.default_rng(seed)
    D = np.where(rng.random((R, C)) < density, rng.uniform(0.5, 5.0, size=(R, C)), 0).astype(np.float32)
    D[EMPTY] = 0
    return D


def test_rating_data_has_the_special_rows():
    """The random data really contains the pathological rows the reference comparison relies on."""
    D = rating_data()
    assert not D[EMPTY].any()
    a, b = set(np.flatnonzero(D[DISJ_A])), set(np.flatnonzero(D[DISJ_B]))
    assert a and b and not (a & b)
    vals = D[CONSTANT][D[CONSTANT] != 0]
    assert len(vals) >= 3 and np.all(vals == vals[0])
    # the constant row overlaps others, so its zero-variance Pearson is actually exercised
    assert (D[5:, D[CONSTANT] != 0] != 0).any()
    assert np.count_nonzero(D[SINGLE]) == 1


# ----------------------------------------------------------------------------------------------
# 1. similarity_matrix vs reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shrink", SHRINKS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_similarity_matrix_matches_numpy_reference(similarity, shrink):
    """similarity_matrix equals the per-pair numpy reference (incl. empty/disjoint/constant/single rows), no NaN/inf."""
    D = rating_data()
    S = similarity_matrix(csr(D), similarity, shrink)
    assert S.shape == (D.shape[0], D.shape[0])
    assert torch.isfinite(S).all()
    np.testing.assert_allclose(S.numpy(), ref_matrix(D, similarity, shrink), rtol=0, atol=1e-5)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_similarity_matrix_matches_reference_on_real_valued_data(similarity):
    """similarity_matrix also matches the reference on non-integer values (TF-IDF-like weights)."""
    D = continuous_data()
    S = similarity_matrix(csr(D), similarity, 2.0)
    assert torch.isfinite(S).all()
    np.testing.assert_allclose(S.numpy(), ref_matrix(D, similarity, 2.0), rtol=0, atol=1e-5)


def test_special_rows_give_documented_zeros():
    """Empty rows, disjoint rows and a constant row under Pearson give 0 (not NaN) where the docstring says so."""
    D = rating_data()
    X = csr(D)
    for s in ("cosine", "pearson", "jaccard"):
        S = similarity_matrix(X, s)
        assert torch.all(S[EMPTY] == 0) and torch.all(S[:, EMPTY] == 0), s
        assert S[DISJ_A, DISJ_B] == 0 and S[DISJ_B, DISJ_A] == 0, s
    P = similarity_matrix(X, "pearson")
    assert torch.all(P[CONSTANT] == 0) and torch.all(P[:, CONSTANT] == 0)
    # single entry: its only co-rated value equals its own mean -> Pearson 0 with everyone
    assert torch.all(P[SINGLE] == 0)
    # shrinkage zeroes every pair with no co-occurring column, euclidean included
    for s in SIMILARITIES:
        S = similarity_matrix(X, s, shrink=5.0)
        assert S[DISJ_A, DISJ_B] == 0 and torch.all(S[EMPTY] == 0), s


# ----------------------------------------------------------------------------------------------
# 2. hand-computed case
# ----------------------------------------------------------------------------------------------

HAND = np.array([[1, 2, 0, 3],
                 [2, 0, 1, 3],
                 [0, 4, 0, 0]], dtype=np.float32)
# supports S0={0,1,3}, S1={0,2,3}, S2={1}; co: (0,1)=2, (0,2)=1, (1,2)=0, diagonal 3, 3, 1.
# row means (own entries): m0=2, m1=2, m2=4.
r14, r6, r30 = np.sqrt(14.0), np.sqrt(6.0), np.sqrt(30.0)
HAND_EXPECTED = {
    # x0.x1 = 2 + 9 = 11, |x0|^2 = |x1|^2 = 14, x0.x2 = 8, |x2| = 4
    "cosine": [[1, 11 / 14, 8 / (4 * r14)],
               [11 / 14, 1, 0],
               [8 / (4 * r14), 0, 1]],
    # (0,1) co-rated {0,3}: centred x0 = (-1, 1), x1 = (0, 1) -> 1 / sqrt(2 * 1);
    # (0,2) co-rated {1}: centred values 0 and 0 -> 0/0 = 0; (1,2) no overlap -> 0;
    # diagonal: row 2 is constant (single entry) -> 0
    "pearson": [[1, 1 / np.sqrt(2), 0],
                [1 / np.sqrt(2), 1, 0],
                [0, 0, 0]],
    # |x0-x1|^2 = 1+4+1+0 = 6, |x0-x2|^2 = 1+4+0+9 = 14, |x1-x2|^2 = 4+16+1+9 = 30
    "euclidean": [[1, 1 / (1 + r6), 1 / (1 + r14)],
                  [1 / (1 + r6), 1, 1 / (1 + r30)],
                  [1 / (1 + r14), 1 / (1 + r30), 1]],
    "jaccard": [[1, 2 / 4, 1 / 3],
                [2 / 4, 1, 0],
                [1 / 3, 0, 1]],
}
# co / (co + 1) for shrink = 1
HAND_SHRINK1 = np.array([[3 / 4, 2 / 3, 1 / 2],
                         [2 / 3, 3 / 4, 0],
                         [1 / 2, 0, 1 / 2]])


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_hand_computed_similarities(similarity):
    """A 3x4 matrix gives the hand-computed similarities, with and without shrink = 1."""
    expected = np.array(HAND_EXPECTED[similarity], dtype=np.float64)
    X = csr(HAND)
    np.testing.assert_allclose(similarity_matrix(X, similarity).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(similarity_matrix(X, similarity, shrink=1.0).numpy(), expected * HAND_SHRINK1,
                               rtol=0, atol=1e-6)


def test_hand_computed_topk():
    """On the 3x4 matrix, k=1 cosine/euclidean neighbourhoods are the hand-computed ones."""
    W = topk_neighbours(csr(HAND), "cosine", k=1)
    rows = rows_of(W)
    assert [c.tolist() for c, _ in rows] == [[1], [0], [0]]
    np.testing.assert_allclose([v[0] for _, v in rows], [11 / 14, 11 / 14, 2 / r14], atol=1e-6)
    W = topk_neighbours(csr(HAND), "euclidean", k=1)
    assert [c.tolist() for c, _ in rows_of(W)] == [[1], [0], [0]]
    # k=5 > R-1: everything positive, columns ascending; row 1's pearson neighbour is only row 0
    W = topk_neighbours(csr(HAND), "pearson", k=5)
    assert [c.tolist() for c, _ in rows_of(W)] == [[1], [0], []]


# ----------------------------------------------------------------------------------------------
# 3. block-size independence
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shrink", SHRINKS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_block_size_independence(similarity, shrink):
    """similarity_matrix and topk_neighbours give the same results for block_size 1, 3, 7, R and 1000."""
    D = rating_data(seed=3)
    X = csr(D)
    R = D.shape[0]
    S0 = similarity_matrix(X, similarity, shrink, block_size=R)
    W0 = topk_neighbours(X, similarity, k=4, shrink=shrink, block_size=R)
    for bs in (1, 3, 7, R, 1000):
        S = similarity_matrix(X, similarity, shrink, block_size=bs)
        assert torch.allclose(S, S0, rtol=0, atol=1e-6), bs
        W = topk_neighbours(X, similarity, k=4, shrink=shrink, block_size=bs)
        assert torch.equal(W.crow_indices(), W0.crow_indices()), bs
        assert torch.equal(W.col_indices(), W0.col_indices()), bs
        assert torch.allclose(W.values(), W0.values(), rtol=0, atol=1e-6), bs


# ----------------------------------------------------------------------------------------------
# 4. topk_neighbours vs reference
# ----------------------------------------------------------------------------------------------

def _check_topk(W: torch.Tensor, ref: np.ndarray, k: int, exact_indices: bool):
    R = ref.shape[0]
    assert W.layout == torch.sparse_csr and W.shape == (R, R)
    for a, (cols, vals) in enumerate(rows_of(W)):
        assert a not in cols, f"row {a} is its own neighbour"
        assert np.all(np.diff(cols) > 0), f"row {a}: columns not strictly ascending"
        assert np.all(vals > 0)
        # kept values are the reference similarities of the kept columns
        np.testing.assert_allclose(vals, ref[a, cols], rtol=0, atol=1e-5)
        others = np.delete(np.arange(R), a)
        cand = others[ref[a, others] > 0]
        n_keep = min(k, len(cand))
        assert len(cols) == n_keep, f"row {a}: kept {len(cols)}, expected {n_keep}"
        best = np.sort(ref[a, cand])[::-1][:n_keep]
        np.testing.assert_allclose(np.sort(vals)[::-1], best, rtol=0, atol=1e-5)
        if exact_indices:
            if n_keep < len(cand):  # the data must separate the k-th from the (k+1)-th neighbour
                assert np.sort(ref[a, cand])[::-1][n_keep - 1] - np.sort(ref[a, cand])[::-1][n_keep] > 1e-5
            expected = cand[np.argsort(-ref[a, cand], kind="stable")[:n_keep]]
            assert sorted(cols.tolist()) == sorted(expected.tolist()), f"row {a}"


@pytest.mark.parametrize("shrink", SHRINKS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("k", (1, 3, 100))
def test_topk_matches_reference_with_ties(similarity, shrink, k):
    """On integer ratings (ties possible) the kept values are the reference top-k positive sims of other rows."""
    D = rating_data()
    W = topk_neighbours(csr(D), similarity, k=k, shrink=shrink, block_size=6)
    _check_topk(W, ref_matrix(D, similarity, shrink), k, exact_indices=False)


@pytest.mark.parametrize("similarity", ("cosine", "pearson", "euclidean"))
@pytest.mark.parametrize("k", (1, 4, 50))
def test_topk_matches_reference_exact_indices(similarity, k):
    """On real-valued data (distinct sims) the kept neighbour sets are exactly the reference top-k."""
    D = continuous_data(seed=12)  # a seed whose k-th / (k+1)-th sims differ by > 1e-4 (checked below)
    ref = ref_matrix(D, similarity)
    W = topk_neighbours(csr(D), similarity, k=k, block_size=7)
    _check_topk(W, ref, k, exact_indices=True)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_topk_k_larger_than_rows_keeps_every_positive(similarity):
    """k > R-1 works and keeps exactly the other rows with positive similarity, valued as in similarity_matrix."""
    D = rating_data()
    X = csr(D)
    R = D.shape[0]
    S = similarity_matrix(X, similarity, 5.0).clone()
    S.fill_diagonal_(0)
    W = topk_neighbours(X, similarity, k=10 * R, shrink=5.0)
    expected = torch.where(S > 0, S, torch.zeros_like(S))
    assert torch.allclose(W.to_dense(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shrink", SHRINKS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_topk_empty_row_and_self(similarity, shrink):
    """A row is never its own neighbour; an empty row has no neighbours (euclidean: only once shrink > 0)."""
    D = rating_data()
    R = D.shape[0]
    W = topk_neighbours(csr(D), similarity, k=R, shrink=shrink).to_dense()
    assert torch.all(torch.diagonal(W) == 0)
    if similarity == "euclidean" and shrink == 0:
        # by definition 1 / (1 + |x_b|) > 0: the empty row is close to everything
        assert torch.count_nonzero(W[EMPTY]) == R - 1
    else:
        assert torch.count_nonzero(W[EMPTY]) == 0
        assert torch.count_nonzero(W[:, EMPTY]) == 0


def test_topk_single_row_and_identical_rows():
    """R=1 gives an empty (1, 1) result; two identical rows are each other's neighbour, not their own."""
    W = topk_neighbours(csr(np.array([[1, 2, 0]], dtype=np.float32)), "cosine", k=5)
    assert W.shape == (1, 1) and W.values().numel() == 0
    D = np.array([[1, 2, 0], [1, 2, 0], [0, 0, 3]], dtype=np.float32)
    W = topk_neighbours(csr(D), "cosine", k=1)
    assert [c.tolist() for c, _ in rows_of(W)] == [[1], [0], []]
    np.testing.assert_allclose(W.values().numpy(), [1.0, 1.0], atol=1e-6)


def test_invalid_arguments_raise():
    """k=0 (or negative) and an unknown similarity name raise ValueError."""
    X = csr(HAND)
    with pytest.raises(ValueError):
        topk_neighbours(X, "cosine", k=0)
    with pytest.raises(ValueError):
        topk_neighbours(X, "cosine", k=-3)
    with pytest.raises(ValueError):
        topk_neighbours(X, "dice", k=2)
    with pytest.raises(ValueError):
        similarity_matrix(X, "dice")


# ----------------------------------------------------------------------------------------------
# 5. binary data
# ----------------------------------------------------------------------------------------------

def test_binary_data_pearson_zero_and_jaccard_sets():
    """On binary data Pearson is all zeros and Jaccard is |A∩B|/|A∪B| of the supports."""
    rng = np.random.default_rng(7)
    D = (rng.random((18, 25)) < 0.3).astype(np.float32)
    D[0] = 0
    X = csr(D)
    assert torch.all(similarity_matrix(X, "pearson") == 0)
    assert torch.all(similarity_matrix(X, "pearson", shrink=3.0) == 0)
    assert topk_neighbours(X, "pearson", k=5).values().numel() == 0
    sets = [set(np.flatnonzero(r).tolist()) for r in D]
    J = np.array([[len(a & b) / len(a | b) if a | b else 0.0 for b in sets] for a in sets])
    np.testing.assert_allclose(similarity_matrix(X, "jaccard").numpy(), J, rtol=0, atol=1e-6)
    # jaccard ignores the values: scaling the entries changes nothing
    np.testing.assert_allclose(similarity_matrix(csr(D * 3.5), "jaccard").numpy(), J, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 6. sparse_rows
# ----------------------------------------------------------------------------------------------

def test_sparse_rows_values_none_gives_ones():
    """sparse_rows(indptr, indices, None, C) is a float32 CSR matrix of ones on the given supports."""
    indptr = torch.tensor([0, 2, 2, 5])
    indices = torch.tensor([1, 3, 0, 2, 3])
    X = sparse_rows(indptr, indices, None, 4)
    assert X.layout == torch.sparse_csr and X.shape == (3, 4) and X.dtype == torch.float32
    expected = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(X.to_dense(), expected)
    # integer values are cast to float32 and kept as given
    Xv = sparse_rows(indptr, indices, torch.tensor([5, 1, 2, 3, 4]), 4)
    assert Xv.dtype == torch.float32
    assert torch.equal(Xv.to_dense(), torch.tensor([[0, 5, 0, 1], [0, 0, 0, 0], [2, 0, 3, 4]],
                                                   dtype=torch.float32))
    # and it feeds straight into the similarities
    np.testing.assert_allclose(similarity_matrix(X, "jaccard").numpy(),
                               [[1, 0, 1 / 4], [0, 0, 0], [1 / 4, 0, 1]], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# known bug
# ----------------------------------------------------------------------------------------------

def test_pearson_constant_non_integer_row_is_zero():
    """A constant row of non-integer values has Pearson 0 with everyone (documented 0/0 = 0) and no neighbours."""
    D = np.zeros((2, 10), dtype=np.float32)
    D[0, :7] = 0.1
    D[1] = np.arange(1, 11)
    X = csr(D)
    S = similarity_matrix(X, "pearson")
    assert torch.all(S[0] == 0) and torch.all(S[:, 0] == 0), S
    assert topk_neighbours(X, "pearson", k=1).values().numel() == 0
