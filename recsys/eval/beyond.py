"""Beyond-accuracy metrics of a set of top-K lists (one list per evaluated user). Definitions
(also in docs/metrics.md), for lists L_u of the top K items of every evaluated user u in U:

    coverage@K   |union of L_u| / n_items                      (share of the catalog ever shown)
    gini@K       Gini index of c_i = number of lists containing item i, over all n_items items
                 (zeros included), c sorted ascending: sum_i (2i - n - 1) c_i / (n sum_i c_i),
                 i = 1..n; 0 = every item shown equally often, -> 1 = one item shown to all
    novelty@K    mean over u of mean over i in L_u of -log2(p_i), p_i = (pop_i + 1) / (n_users + 1)
                 with pop_i = number of training users of item i (add-one, so a cold item is
                 finite: as if one user had it)
    ild@K        intra-list diversity: mean over u of 1 - mean over pairs a != b in L_u of
                 cos(v_a, v_b), v = the items' TF-IDF token vectors (model-independent); an item
                 without text has v = 0, so its pairs count as cosine 0
    tail@K       share of recommended slots that go to long-tail items: items outside the short
                 head, the most popular items that together hold `head_share` (default 0.8) of
                 the training interactions; cold items are tail
"""
from __future__ import annotations

import torch

from recsys.sparse.csr import row_ids
from recsys.sparse.similarity import select_rows


def recommendation_counts(lists: torch.Tensor, n_items: int) -> torch.Tensor:
    """(n_items,) how many lists contain each item. lists: (N, K) item indices."""
    return torch.bincount(lists.flatten(), minlength=n_items)


def gini(counts: torch.Tensor) -> float:
    """Gini index of non-negative counts (n,), zeros included; 0 when all equal or all zero."""
    c = torch.sort(counts.double()).values
    n, total = len(c), float(c.sum())
    if n == 0 or total == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * c).sum() / (n * total))


def head_items(train_item_counts: torch.Tensor, head_share: float = 0.8) -> torch.Tensor:
    """(n_items,) bool: the short head, the fewest most popular items whose interactions reach
    head_share of all training interactions (ties by lower index)."""
    if not 0 < head_share <= 1:
        raise ValueError(f"head_share={head_share} must be in (0, 1]")
    c = train_item_counts.double()
    order = torch.sort(-c, stable=True).indices
    cum = torch.cumsum(c[order], 0)
    n_head = int(torch.searchsorted(cum, head_share * float(c.sum()) - 1e-9)) + 1
    head = torch.zeros(len(c), dtype=torch.bool)
    head[order[:min(n_head, len(c))]] = True
    return head & (c > 0)


def self_information(train_user_counts: torch.Tensor, n_users: int) -> torch.Tensor:
    """(n_items,) -log2((pop_i + 1) / (n_users + 1))."""
    return -torch.log2((train_user_counts.double() + 1) / (n_users + 1))


def intra_list_distance(lists: torch.Tensor, unit_vectors: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(N,) 1 - mean pairwise cosine within each list. unit_vectors: (n_items, T) sparse CSR or
    dense rows of norm 1 (or 0 for items without text).
    The off-diagonal sum of a list's Gram matrix is |sum_i v_i|^2 - sum_i |v_i|^2, so a sparse
    table needs only each list's summed vector: its entries, summed by (list, token), cost the
    list's nonzeros, not a dense (K, T) block per list (at 20,000 tokens and 500,000 test users
    that block made this the slowest part of a report)."""
    N, K = lists.shape
    if K < 2:
        return torch.zeros(N, dtype=torch.float64)
    out = []
    for s in range(0, N, chunk):
        L = lists[s:s + chunk]                                                   # (b, K)
        if unit_vectors.layout == torch.sparse_csr:
            rows = select_rows(unit_vectors, L.flatten())                        # (b*K, T)
            crow = rows.crow_indices()
            v = rows.values().double()                                           # (nnz,)
            lst = row_ids(crow) // K                                             # (nnz,) list of each entry
            T = unit_vectors.shape[1]
            key = lst * T + rows.col_indices()                                   # (list, token)
            uniq, inv = torch.unique(key, return_inverse=True)
            summed = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, v)   # (list, token) sums
            sq_sum = torch.zeros(len(L), dtype=torch.float64).index_add_(0, uniq // T, summed * summed)
            diag = torch.zeros(len(L), dtype=torch.float64).index_add_(0, lst, v * v)
            off = sq_sum - diag
        else:
            V = unit_vectors[L]                                                  # (b, K, T)
            G = torch.bmm(V, V.transpose(1, 2)).double()                         # (b, K, K)
            off = G.sum((1, 2)) - torch.diagonal(G, dim1=1, dim2=2).sum(1)
        out.append(1.0 - off / (K * (K - 1)))
    return torch.cat(out)


def beyond_accuracy(lists: torch.Tensor, ks: list[int], n_items: int, train_user_counts: torch.Tensor,
                    n_users: int, unit_vectors: torch.Tensor | None = None, head_share: float = 0.8,
                    prefix: str = "test/") -> dict[str, float]:
    """{"test/coverage@10": ..., "test/gini@10", "test/novelty@10", "test/ild@10", "test/tail@10"}
    for every K in ks (lists: (N, max(ks)) ranked item indices, best first)."""
    lists = lists.cpu()
    info = self_information(train_user_counts.cpu(), n_users)
    head = head_items(train_user_counts.cpu(), head_share)
    out: dict[str, float] = {}
    for k in sorted(ks):
        L = lists[:, :k]
        if len(L) == 0:
            continue
        counts = recommendation_counts(L, n_items)
        out[f"{prefix}coverage@{k}"] = float((counts > 0).sum()) / n_items
        out[f"{prefix}gini@{k}"] = gini(counts)
        out[f"{prefix}novelty@{k}"] = float(info[L].mean())
        out[f"{prefix}tail@{k}"] = float((~head[L]).double().mean())
        if unit_vectors is not None:
            out[f"{prefix}ild@{k}"] = float(intra_list_distance(L, unit_vectors).mean())
    return out


def unit_rows(indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Sparse CSR (R, n_cols) of the rows scaled to unit L2 norm (empty rows stay empty)."""
    R = len(indptr) - 1
    row = row_ids(indptr)
    w = weights.float()
    sq = torch.zeros(R).index_add_(0, row, w * w)
    inv = torch.where(sq > 0, sq.rsqrt(), torch.zeros_like(sq))
    return torch.sparse_csr_tensor(indptr, indices, w * inv[row], (R, n_cols))

