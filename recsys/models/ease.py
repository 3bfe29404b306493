"""EASE (Steck 2019), the closed-form item-item model:

    s[u, :] = x_u B,   B = I - P diagMat(1 / diag(P)),   P = (X^T X + lambda I)^-1

With side = beta > 0, side-information EASE (Jeunen, Van Balen & Goethals 2020, "Closed-form
models for collaborative filtering with side-information"): the items' L2-normalised TF-IDF token
vectors T (I, T) are stacked under X as beta-weighted pseudo-users, X' = [X; beta T^T], so

    P = (X^T X + beta^2 T T^T + lambda I)^-1

and items that share words are tied together in B as if some users had taken both. Users are
still scored with their history x_u alone.

Memory O(I^2): config.max_items refuses catalogs that would not fit (3 x 4 x I^2 bytes).
"""
from __future__ import annotations

import torch

from recsys.models.base import is_histories
from recsys.models.memory import MemoryConfig, MemoryModel
from recsys.models.similar import Columns
from recsys.sparse.similarity import select_rows, sparse_rows, transpose
from recsys.sparse.spgemm import RightOperand, Workspace, column_counts, heavy_columns, slice_rows


class EASE(MemoryModel):
    kind = "ease"
    fields = ("lam", "side", "max_items", "block_size", "cold_k", "cold_scale")
    tables = ("ease_B",)
    fills_cold = True

    @classmethod
    def _fit_tables(cls, c: MemoryConfig, X: torch.Tensor, buffers: dict) -> dict[str, torch.Tensor]:
        if c.n_items > c.max_items:
            raise ValueError(f"EASE needs {3 * 4 * c.n_items ** 2 / 2 ** 30:.1f} GiB for {c.n_items} items "
                             f"(O(items^2)); model.max_items={c.max_items}. Raise it if the memory is there.")
        # G = X^T X, then P = G^-1 by Cholesky (G + lambda I is symmetric positive definite),
        # in place of G where possible
        G = gram_matrix(X, c)
        if c.side > 0:
            _add_token_gram(G, c, buffers)                                           # + beta^2 T T^T
        G.diagonal().add_(c.lam)
        L = torch.linalg.cholesky(G)
        del G
        P = torch.cholesky_inverse(L)
        del L
        if not P.is_contiguous():    # LAPACK hands back column-major; P is symmetric, so P.T
            P = P.T if P.T.is_contiguous() else P.contiguous()   # is the same matrix, row-major
        B = P.div_((-P.diagonal()).clone()[None, :])                                 # in place
        B.diagonal().zero_()
        return {"ease_B": B}

    @classmethod
    def _declare_tables(cls, c: MemoryConfig, spec, p: str) -> None:
        spec.add(p + "ease_B", "F32", c.n_items, c.n_items)

    def own_spaces(self, of: str) -> tuple[str, ...]:
        return ("weights",) if of == "items" else ()

    def default_space(self, of: str) -> str:
        return "weights" if of == "items" else "history"

    def own_similarity(self, of: str, space: str):
        return Columns(self.ease_B)

    def score_columns(self, who: torch.Tensor, side, cols: torch.Tensor | None = None, out=None, ws=None) -> torch.Tensor:
        """(b, C) scores of the candidate columns only: s[u, cols] = sum_j x_uj B[j, cols],
        nnz(H) x C reads (the whole catalog when cold items borrow: their fill reads other columns)."""
        if cols is None or self.has_fill:
            return super().score_columns(who, side, cols, out, ws)
        H = who if is_histories(who) else select_rows(self._hist(), who)
        G = self.ease_B[H.col_indices()[:, None], cols[None, :]]                       # (nnz, C)
        return torch.nn.functional.embedding_bag(
            torch.arange(len(G), device=G.device), G, H.crow_indices()[:-1], mode="sum",
            per_sample_weights=H.values().to(G.dtype))

    def score_histories(self, H: torch.Tensor, side, out=None, ws=None) -> torch.Tensor:
        """(b, I) sparse history rows -> (b, I): s[u] = sum_j x_uj B[j], a weighted sum of rows
        of B per user (an embedding bag), work nnz(H) x I reads, no (b, I) temporary besides
        the result (`out` is not used: embedding_bag has no out=, and a copy would be one more pass)."""
        return self._fill(torch.nn.functional.embedding_bag(
            H.col_indices(), self.ease_B, H.crow_indices()[:-1],
            mode="sum", per_sample_weights=H.values().to(self.ease_B.dtype)))

    def _grow_tables(self, st: dict[str, torch.Tensor], m: int) -> None:
        # a never-seen item's row and column of the closed form are exactly 0
        st["ease_B"] = torch.nn.functional.pad(st["ease_B"], (0, m, 0, m))


def gram_matrix(X: torch.Tensor, c: MemoryConfig) -> torch.Tensor:
    """G = X^T X (I, I) dense, X (U, I) sparse CSR: the sparse kernel (heavy users by GEMM), row
    groups written straight into G on every core, each group 4x ranking's product budget
    (max_products x 12 bytes of scratch a worker): 8M products a group fit 10,000 items' Gram
    in 1.2-1.3 s against 1.4-1.7 s with 2M (two threads; benchmarks/ease_fit.py)."""
    XT = transpose(X)                                                                # (I, U)
    cc = column_counts(XT)
    op = RightOperand(XT, heavy_columns(cc, cc, c.n_items, c.n_items, c.dense_ratio), transposed=X)
    G = torch.empty(c.n_items, c.n_items, dtype=XT.values().dtype, device=XT.device)
    op.product_bounded(XT, G, Workspace(), 4 * c.max_products, workers=None)
    return G


def _add_token_gram(G: torch.Tensor, c: MemoryConfig, buffers: dict, block: int = 1024) -> None:
    """In place: G += side^2 T T^T, the token vectors' scalar products by the sparse kernel, in
    row blocks (block x I floats besides G)."""
    if "tok_indptr" not in buffers or len(buffers["tok_indices"]) == 0:
        raise ValueError(f"model.side={c.side} needs the items' token bags (an item table with text)")
    T = sparse_rows(buffers["tok_indptr"], buffers["tok_indices"], buffers["tok_weights"], max(c.n_tokens, 1))
    cc = column_counts(T)
    op = RightOperand(T, heavy_columns(cc, cc, c.n_items, c.n_items, c.dense_ratio))
    ws = Workspace()
    for r0 in range(0, c.n_items, block):
        r1 = min(c.n_items, r0 + block)
        out = ws.matrix("side", r1 - r0, c.n_items, T.values().dtype, T.values().device)
        G[r0:r1].add_(op.product_bounded(slice_rows(T, r0, r1), out, ws, c.max_products, workers=None),
                      alpha=float(c.side) ** 2)
