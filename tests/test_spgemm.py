"""The sparse x sparse kernel under the KNN models: A @ B^T into dense blocks, light columns by
scalar products, heavy columns by one GEMM. Checked against numpy on random data."""
import numpy as np
import pytest
import torch

from recsys.sparse.similarity import similarity_matrix, topk_neighbours
from recsys.sparse.spgemm import RightOperand, Workspace, column_counts, cut_rows, heavy_columns


def _random(rows, cols, density, seed, binary=False):
    rng = np.random.default_rng(seed)
    D = (rng.random((rows, cols)) < density) * (1.0 if binary else rng.uniform(0.1, 3.0, (rows, cols)))
    D[0] = 0                                                    # an empty row
    D[:, 1] = 0                                                 # an empty column
    D[:, 2] = np.where(rng.random(rows) < 0.9, D[:, 2] + 1, 0)  # a heavy column
    return D.astype(np.float32)


def _csr(D):
    return torch.tensor(D).to_sparse_csr()


def _heavy_sets(A, B):
    every = torch.arange(A.shape[1])
    chosen = heavy_columns(column_counts(_csr(A)), column_counts(_csr(B)), A.shape[0], B.shape[0])
    return {"none": None, "all": every, "default": chosen, "some": every[::3]}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("split", ["none", "all", "default", "some"])
def test_product_equals_dense_reference(binary, split):
    """A @ B^T equals numpy whichever columns are heavy, on binary and real values."""
    A, B = _random(13, 11, 0.35, 0, binary), _random(17, 11, 0.3, 1, binary)
    op = RightOperand(_csr(B), _heavy_sets(A, B)[split])
    np.testing.assert_allclose(op.product(_csr(A)).numpy(), A @ B.T, atol=1e-5, rtol=0)


def test_default_split_has_heavy_and_light_columns():
    """The cost rule picks the dense column as heavy and leaves sparse ones light, so both paths run."""
    A = _random(200, 40, 0.05, 2)
    h = heavy_columns(column_counts(_csr(A)), column_counts(_csr(A)), 200, 200).tolist()
    assert 2 in h and len(h) < 40


@pytest.mark.parametrize("budget", [1, 7, 40, 10 ** 9])
def test_bounded_product_and_reused_buffers(budget):
    """Rows cut by a product budget (down to one row) and a reused workspace/output change nothing."""
    A, B = _random(19, 9, 0.4, 3), _random(8, 9, 0.5, 4)
    op = RightOperand(_csr(B), torch.tensor([2]))
    ws = Workspace()
    out = torch.full((19, 8), 123.0)                          # garbage: must be overwritten
    for _ in range(2):
        got = op.product_bounded(_csr(A), out, ws, budget)
        np.testing.assert_allclose(got.numpy(), A @ B.T, atol=1e-5, rtol=0)
    # a smaller A after a bigger one reuses (longer) scratch vectors correctly
    np.testing.assert_allclose(op.product(_csr(A[:3]), None, ws).numpy(), A[:3] @ B.T, atol=1e-5, rtol=0)
    # the row groups on two worker threads (EASE's Gram): each writes its own rows of out
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = op.product_bounded(_csr(A), torch.full((19, 8), 123.0), None, budget, workers=None)
        np.testing.assert_allclose(got.numpy(), A @ B.T, atol=1e-5, rtol=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_empty_operands():
    """No entries at all, or only empty rows, give zeros."""
    Z = np.zeros((4, 5), np.float32)
    B = _random(6, 5, 0.5, 5)
    assert torch.count_nonzero(RightOperand(_csr(B)).product(_csr(Z))) == 0
    assert torch.count_nonzero(RightOperand(_csr(Z)).product(_csr(B[:4]))) == 0


def test_cut_rows():
    """Ranges respect both limits; a row heavier than the budget gets a range of its own."""
    assert cut_rows([1, 1, 1, 1], 2, 100) == [(0, 2), (2, 4)]
    assert cut_rows([1, 5, 1, 1], 10, 3) == [(0, 1), (1, 2), (2, 4)]
    assert cut_rows([], 4, 4) == []


@pytest.mark.parametrize("similarity", ["cosine", "pearson", "euclidean", "jaccard"])
def test_similarity_independent_of_heavy_split_and_workers(similarity):
    """The similarity and the kept neighbours do not depend on dense_ratio or on the worker count."""
    X = _csr(_random(40, 30, 0.2, 6))
    ref = similarity_matrix(X, similarity, shrink=1.0, dense_ratio=0.0, workers=1)
    for ratio, workers in ((1e12, 1), (400.0, 2), (400.0, 3)):
        got = similarity_matrix(X, similarity, shrink=1.0, dense_ratio=ratio, workers=workers, block_size=7)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    W0 = topk_neighbours(X, similarity, k=5, dense_ratio=0.0, workers=1)
    W1 = topk_neighbours(X, similarity, k=5, dense_ratio=1e12, workers=2, block_size=3)
    torch.testing.assert_close(W1.to_dense(), W0.to_dense(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [50, 3000, 20011])
@pytest.mark.parametrize("k", [1, 10, 37])
def test_two_stage_topk_equals_torch_topk(n, k):
    """topk_rows returns torch.topk's values (ties included: integer scores) and indices holding them."""
    from recsys.eval.ranking import topk_rows
    g = torch.Generator().manual_seed(n + k)
    for s in (torch.randn(33, n, generator=g), torch.randint(0, 5, (33, n), generator=g).float()):
        s[0] = float("-inf")                                  # a fully masked row
        s[1, : n // 2] = float("-inf")
        v, i = topk_rows(s, k)
        ref = torch.topk(s, k, dim=1).values
        assert torch.equal(v, ref)
        assert torch.equal(torch.gather(s, 1, i), v)
        assert all(len(set(r.tolist())) == k for r in i)      # no item twice


@pytest.mark.parametrize("binary", [False, True])
def test_padded_groups_over_power_law_lengths(binary):
    """Columns whose lists range from 0 to 200 entries fall into many padded length groups; the
    product still equals numpy, and light_products counts the padded work (>= the exact work,
    <= PAD_RATIO x it)."""
    from recsys.sparse.spgemm import PAD_RATIO
    rng = np.random.default_rng(7)
    R, C = 200, 60
    lengths = np.minimum((rng.pareto(1.0, C) * 5).astype(int), R)     # 0 ... 200 rows per column
    B = np.zeros((R, C), np.float32)
    for c, n in enumerate(lengths):
        B[rng.choice(R, n, replace=False), c] = 1.0 if binary else rng.uniform(0.5, 2.0, n)
    A = _random(23, C, 0.3, 8, binary)
    op = RightOperand(_csr(B))
    assert len([p for p in op.pads if p is not None]) >= 5
    np.testing.assert_allclose(op.product(_csr(A)).numpy(), A @ B.T, atol=1e-4, rtol=1e-6)
    exact = (A != 0).astype(np.float64) @ (B != 0).sum(0)
    padded = op.light_products(_csr(A)).numpy()
    assert np.all(padded >= exact) and np.all(padded <= PAD_RATIO * exact + 1e-9)


def test_parallel_blocks_restore_torch_threads():
    """Blocks run on single-threaded workers; torch's thread count is restored afterwards, also
    when a block fails."""
    X = _csr(_random(60, 30, 0.2, 9))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        W1 = topk_neighbours(X, "cosine", 5, workers=1).to_dense()
        W2 = topk_neighbours(X, "cosine", 5, block_size=7, workers=2).to_dense()
        assert torch.get_num_threads() == 2
        torch.testing.assert_close(W2, W1, atol=1e-6, rtol=0)
        from recsys.sparse.similarity import _blocks, Similarity, _run_blocks
        p = Similarity(X, "cosine", 0.0)

        def fail(r0, r1, sim, scale):
            raise RuntimeError("block failed")
        with pytest.raises(RuntimeError, match="block failed"):
            _run_blocks(p, _blocks(p, 7, 1e9), fail, workers=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n", [50, 3000, 20011])
@pytest.mark.parametrize("k", [1, 10, 37])
def test_topk_rows_breaks_ties_towards_the_lower_index(n, k):
    """Known answer: the order of a stable sort by descending score (equal scores: lower column
    first), with heavy ties (scores 0..3), ties straddling the cut inside and outside the chosen
    groups, fully masked rows and rows with fewer than k unmasked items."""
    from recsys.eval.ranking import topk_rows
    g = torch.Generator().manual_seed(3 * n + k)
    s = torch.randint(0, 4, (40, n), generator=g).float()
    s[0] = float("-inf")
    s[1, 3:] = float("-inf")                                  # fewer than k unmasked items (k > 3)
    s[2] = 1.0                                                # one big tie
    s[3, -5:] = 9.0                                           # leftover columns hold the best
    s[4] = torch.randn(n, generator=g)                        # continuous scores
    ref = np.argsort(-s.numpy(), axis=1, kind="stable")[:, :k]
    v, i = topk_rows(s, k)
    np.testing.assert_array_equal(i.numpy(), ref)
    np.testing.assert_array_equal(v.numpy(), np.take_along_axis(s.numpy(), ref, 1))
