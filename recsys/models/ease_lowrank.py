"""EASE for large catalogs: the closed form with the Gram matrix's top eigenvectors, memory
O(items x rank) instead of O(items^2) (model=ease_lowrank).

EASE (ease.py) is B = I - P diagMat(1 / diag(P)), P = (G + lambda I)^-1, G = X^T X (+ beta^2 T T^T
with side information). With G's top `rank` eigenpairs G ~ V S V^T (V (I, r) orthonormal),

    P ~ (1 / lambda) (I - V W V^T),   W = diag(s / (s + lambda))

exact on the top eigenvectors and replacing every other eigenvalue s by 0 in (s + lambda)^-1,
an error small when those s are small against lambda (fit logs s_r / lambda: near or below 1
the approximation is close; the shared random80 split reaches 0.9995x dense EASE's NDCG@10 at
rank 512). Then, with c_j = 1 / (lambda P_jj) = 1 / (1 - sum_k w_k V_jk^2),

    B = I - C + V W V^T C       (C = diag(c); B_jj = 0 as in EASE)
    s[u] = x_u B = (x_u V W) (C V)^T + x_u * (1 - c)

so a user is a rank-r vector z_u = x_u (V W) (an SpMM of the history) and ranking is one
(b, r) @ (r, I) matmul plus the history's own entries, like matrix factorisation with dim r.

Fit (no (I, I) matrix): randomized subspace iteration for the top eigenpairs of G (Halko,
Martinsson & Tropp 2011): Q = orth(G Omega), power_iters times Q = orth(G Q), then the
Rayleigh-Ritz step on Q^T G Q; each product G Q = sum over blocks of users X_b^T (X_b Q)
(+ beta^2 T (T^T Q)) is sparse x dense products. Memory: a few (I, r + 64) matrices and one
block's X_b Q (131,072 users x (r + 64) floats).

Worked example (shapes): 1,000,000 users x 100,000 items, rank 512: the tables V W and C V are
(100,000, 512) each (205 MB each).
"""
from __future__ import annotations

import logging

import torch

from recsys.models.memory import MemoryConfig, MemoryModel, out_block
from recsys.sparse.csr import row_ids
from recsys.sparse.similarity import select_rows, sparse_rows, transpose
from recsys.sparse.spgemm import slice_rows

log = logging.getLogger(__name__)

OVERSAMPLE = 64        # extra directions of the randomized range finder
USER_BLOCK = 1 << 17   # users per block of X Q during the fit
FLOAT64_BYTES = 1 << 30   # the eigensolver's (I, rank + 64) blocks in float64 up to this size


class LowRankEASE(MemoryModel):
    kind = "ease_lowrank"
    fields = ("lam", "side", "rank", "power_iters", "cold_k", "cold_scale")
    tables = ("lr_user", "lr_item", "lr_self")
    fills_cold = True
    writes_out = True

    @classmethod
    def _fit_tables(cls, c: MemoryConfig, X: torch.Tensor, buffers: dict) -> dict[str, torch.Tensor]:
        s, V = top_eigen(X, c, buffers)                                                # (r,), (I, r)
        w = (s / (s + c.lam)).to(V.dtype)                                             # (r,)
        cj = 1.0 / (1.0 - (V * V) @ w).clamp(min=1e-12)                               # (I,)
        log.info("ease_lowrank: rank %d, eigenvalues %.4g .. %.4g, s_r / lambda = %.3g", len(s), float(s[0]),
                 float(s[-1]), float(s[-1]) / c.lam)
        return {"lr_user": (V * w).float().contiguous(),           # x_u @ this = z_u   (I, r)
                "lr_item": (V * cj[:, None]).float().contiguous(),  # z_u @ this^T      (I, r)
                "lr_self": (1.0 - cj).float()}                      # a history item's own term (I,)

    @classmethod
    def _declare_tables(cls, c: MemoryConfig, spec, p: str) -> None:
        r = min(c.rank, c.n_items)
        spec.add(p + "lr_user", "F32", c.n_items, r)
        spec.add(p + "lr_item", "F32", c.n_items, r)
        spec.add(p + "lr_self", "F32", c.n_items)

    def score_histories(self, H: torch.Tensor, side, out=None, ws=None) -> torch.Tensor:
        """(b, I) sparse history rows -> (b, I): (x_u V W) (C V)^T + x_u * (1 - c)."""
        z = H.to(self.lr_user.dtype) @ self.lr_user                                    # (b, r)
        s = torch.mm(z, self.lr_item.T, out=out_block(out, H.shape[0], self.n_items, z))
        col = H.col_indices()
        s.index_put_((row_ids(H.crow_indices()), col), H.values().to(s.dtype) * self.lr_self[col], accumulate=True)
        return self._fill(s)

    def score_users(self, users: torch.Tensor, side, out=None, ws=None) -> torch.Tensor:
        return self.score_histories(select_rows(self._hist(), users), side, out, ws)

    def _grow_tables(self, st: dict[str, torch.Tensor], m: int) -> None:
        # a never-seen item: no row in V (its row and column of B are 0), c = 1
        for name in ("lr_user", "lr_item"):
            st[name] = torch.nn.functional.pad(st[name], (0, 0, 0, m))
        st["lr_self"] = torch.nn.functional.pad(st["lr_self"], (0, m))


def top_eigen(X: torch.Tensor, c: MemoryConfig, buffers: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(s (r,), V (I, r)): the top min(rank, I) eigenpairs of G = X^T X (+ side^2 T T^T), largest
    first, by randomized subspace iteration (module docstring): in float64 while an (I, r + 64)
    block fits in FLOAT64_BYTES, else in float32 (a million items: 2.3 GB a block instead of 4.6)."""
    I = c.n_items
    r = min(int(c.rank), I)
    k = min(r + OVERSAMPLE, I)
    # X in blocks of users with each block's transpose, so X Q is never (U, k) at once
    blocks = []
    for a in range(0, X.shape[0], USER_BLOCK):
        Xb = slice_rows(X, a, min(X.shape[0], a + USER_BLOCK))
        blocks.append((Xb, transpose(Xb)))
    T = TT = None
    if c.side > 0:
        if "tok_indptr" not in buffers or len(buffers["tok_indices"]) == 0:
            raise ValueError(f"model.side={c.side} needs the items' token bags (an item table with text)")
        T = sparse_rows(buffers["tok_indptr"], buffers["tok_indices"], buffers["tok_weights"], max(c.n_tokens, 1))
        TT = transpose(T)

    dt = torch.float64 if I * k * 8 <= FLOAT64_BYTES else torch.float32

    def gram(Q: torch.Tensor) -> torch.Tensor:                                         # G @ Q, (I, k)
        Qf = Q.to(X.values().dtype)
        out = torch.zeros(I, Q.shape[1], dtype=dt, device=Q.device)
        for Xb, XbT in blocks:
            out += XbT @ (Xb @ Qf)
        if T is not None:
            out += float(c.side) ** 2 * (T @ (TT @ Qf.to(T.values().dtype))).to(dt)
        return out

    g = torch.Generator(device="cpu").manual_seed(seed)
    Q = torch.linalg.qr(gram(torch.randn(I, k, generator=g, dtype=dt).to(X.device)))[0]
    for _ in range(int(c.power_iters)):
        Q = torch.linalg.qr(gram(Q))[0]
    GQ = gram(Q)
    s, U = torch.linalg.eigh(((Q.T @ GQ + GQ.T @ Q) / 2).double())                   # (k,), (k, k) ascending
    s, U = s.flip(0)[:r].clamp(min=0), U.flip(1)[:, :r]
    return s, Q @ U.to(dt)
