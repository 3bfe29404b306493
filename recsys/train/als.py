"""Closed-form training of the collaborative tables: implicit-feedback alternating least squares
(Hu, Koren and Volinsky 2008) with conjugate-gradient steps (Takacs, Pilaszy and Tikk 2011), the
solver of `model.optim.solver=als` (configs/model/als.yaml; als_tokens.yaml: the mf_tokens variant,
whose item vectors add the pooled token rows W E, with the token table E a third block solved by
one CG over the whole table, solve_tokens).

    minimise  sum_{u, i} c_ui (p_ui - U[u] . V[i])^2 + reg (|U|^2 + |V|^2)
              p_ui = 1 for a training interaction, else 0;  c_ui = 1 + alpha there, else 1

With V fixed, each user's row solves (V^T V + reg I + alpha sum_{i in I(u)} V[i] V[i]^T) x =
(1 + alpha) sum_{i in I(u)} V[i]; then the items likewise with U fixed. Each side takes cg_steps
conjugate-gradient steps from the current rows, all rows at once (in blocks of rows), with two
sparse kernels per step over the interactions (nnz = interactions):

    q  = (P V^T) at the interactions        torch.sparse.sampled_addmm (SDDMM)   nnz x D
    AP = P (V^T V + reg I) + alpha (q as CSR) V                     (SpMM)       nnz x D

so an iteration costs about 2 x (cg_steps + 2) passes of nnz x D multiply-adds and keeps the two
CSR orientations of the interactions plus four (block, D) matrices: no (U, I) block, no per-user
loop in Python. ALSModule runs one iteration (users, then items) per Lightning epoch, so
validation, early stopping, checkpoints, TensorBoard curves and the export are the learned
model's own. The collaborative variant only, without item bias (ALS fits none).

Worked example (shapes): 3 users, 4 items, dim 2; U (3, 2), V (4, 2), CSR (indptr (4,),
indices (nnz,)): `solve_side(U, V, indptr, indices, alpha=1.0, reg=0.1, steps=3)` updates U in place.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from recsys.models.learned import Collaborative
from recsys.sparse.csr import csr
from recsys.sparse.similarity import sparse_rows, transpose
from recsys.train.module import RankingModule


def solve_side(X: torch.Tensor, Y: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, alpha: float,
               reg: float, steps: int, block: int = 1 << 18, offset: torch.Tensor | None = None,
               rest: torch.Tensor | None = None) -> None:
    """In place: X (n, D) <- `steps` CG steps from X toward the ALS solution for fixed Y (m, D);
    (indptr (n+1,), indices) CSR of each row's interactions (columns of Y). offset (n, D): the
    rows' vectors are X + offset with offset fixed (the item tokens' pool C): X solves
    (A + reg I) x = b - A offset. rest (n, D), when given, receives b - A (X + offset) for the
    new X (the CG's own residual plus reg X: the token solve starts from it, no pass of its own)."""
    n, m = X.shape[0], Y.shape[0]
    G = Y.T @ Y + reg * torch.eye(Y.shape[1], dtype=Y.dtype, device=Y.device)        # (D, D)
    for a in range(0, n, block):
        b = min(n, a + block)
        lo, hi = int(indptr[a]), int(indptr[b])
        crow, col = indptr[a:b + 1] - lo, indices[lo:hi]
        S = torch.sparse_csr_tensor(crow, col, torch.ones(hi - lo, dtype=Y.dtype, device=Y.device), (b - a, m))

        def A(P: torch.Tensor) -> torch.Tensor:                                       # (b, D) -> (b, D)
            q = torch.sparse.sampled_addmm(S, P, Y.T, beta=0.0).values()              # (nnz,) p_u . y_i
            W = torch.sparse_csr_tensor(crow, col, q.mul_(alpha), (b - a, m))
            return torch.addmm(W @ Y, P, G)

        x = X[a:b]
        if offset is None:
            r = (S @ Y).mul_(1.0 + alpha).sub_(A(x))                                  # residual (b, D)
        else:                          # b - (A + reg) x - A o = b - (A + reg)(x + o) + reg o: one product
            o = offset[a:b]
            r = (S @ Y).mul_(1.0 + alpha).sub_(A(x + o)).add_(o, alpha=reg)
        conjugate_gradient(x, r, A, steps, lambda u, v: (u * v).sum(1, keepdim=True))  # a system per row
        X[a:b] = x
        if rest is not None:
            torch.add(r, x, alpha=reg, out=rest[a:b])


def conjugate_gradient(x: torch.Tensor, r: torch.Tensor, apply, steps: int, dot) -> None:
    """In place: `steps` CG steps on x from its residual r = b - A x (r is used up); apply(p) =
    A p. dot(u, v): the inner products, one per independent system (per row: (n, 1)) or one
    for the whole matrix (a scalar)."""
    p = r.clone()
    rs = dot(r, r)
    for _ in range(steps):
        Ap = apply(p)
        step = rs / dot(p, Ap).clamp(min=1e-30)
        x.addcmul_(step, p)
        r.addcmul_(step, Ap, value=-1.0)
        rs_new = dot(r, r)
        p = r + (rs_new / rs.clamp(min=1e-30)) * p
        rs = rs_new


def solve_tokens(E: torch.Tensor, U: torch.Tensor, V: torch.Tensor, W: torch.Tensor, WT: torch.Tensor,
                 indptr: torch.Tensor, indices: torch.Tensor, warm: torch.Tensor, alpha: float, reg: float,
                 steps: int, rest: torch.Tensor | None = None) -> None:
    """In place: the token table E (T, D) <- `steps` CG steps toward the least squares of item
    vectors y = V + W E (W (I, T) the TF-IDF bags as CSR, WT its transpose; V the warm items'
    free rows) for fixed users U, over the warm items (an item with no interaction constrains
    nothing, as an item added later):  (W^T A W + reg I) E = W^T (b - A V), with A_i the items'
    blocks U^T C_i U (no ridge) and b_i = (1 + alpha) sum_{u in U_i} U[u]; one CG over the whole
    table (the tokens are coupled through the items that share them). rest (I, D): b - A (V + W E)
    when the caller has it (solve_side's), else computed here (one pass over the interactions)."""
    I = V.shape[0]
    w = warm[:, None].to(U.dtype)                                                      # (I, 1)
    G0 = U.T @ U                                                                       # (D, D)
    S = torch.sparse_csr_tensor(indptr, indices, torch.ones(len(indices), dtype=U.dtype, device=U.device),
                                (I, U.shape[0]))

    def A(Z: torch.Tensor) -> torch.Tensor:                                           # (I, D) -> (I, D)
        Z = Z * w
        q = torch.sparse.sampled_addmm(S, Z, U.T, beta=0.0).values()
        return torch.addmm(torch.sparse_csr_tensor(indptr, indices, q.mul_(alpha), (I, U.shape[0])) @ U, Z, G0) * w

    def M(P: torch.Tensor) -> torch.Tensor:                                           # (T, D) -> (T, D)
        return (WT @ A(W @ P)).add_(P, alpha=reg)

    # W^T (b - A V) - (W^T A W E + reg E) = W^T (b - A (V + W E)) - reg E: one product over the items
    if rest is None:
        rest = (S @ U).mul_(1.0 + alpha).mul_(w).sub_(A(V + W @ E))
    r = (WT @ (rest * w)).sub_(E, alpha=reg)
    conjugate_gradient(E, r, M, steps, lambda u, v: (u * v).sum())                 # one system


def als_loss(U: torch.Tensor, V: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, alpha: float,
             reg: float, penalty: float | None = None) -> float:
    """The objective (module docstring) over every (user, item) pair, without a (U, I) block:
    sum over interactions of c (1 - s)^2 - s^2, plus tr(U^T U V^T V) (every pair's s^2), plus
    the penalty (reg (|U|^2 + |V|^2), or `penalty` when the item vectors are made of other
    tables); s = U[u] . V[i]."""
    S = torch.sparse_csr_tensor(indptr, indices, torch.ones(len(indices), dtype=U.dtype, device=U.device),
                                (U.shape[0], V.shape[0]))
    s = torch.sparse.sampled_addmm(S, U, V.T, beta=0.0).values().double()
    seen = ((1.0 + alpha) * (1.0 - s) ** 2 - s ** 2).sum()
    every = ((U.T @ U).double() * (V.T @ V).double()).sum()
    if penalty is None:
        penalty = float(reg * (U.double().pow(2).sum() + V.double().pow(2).sum()))
    return float(seen + every) + penalty


def item_bags(s: Collaborative) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (I, T) CSR of the items' TF-IDF bags, its transpose W^T)."""
    W = sparse_rows(s.tok_indptr, s.tok_indices, s.tok_weights, max(s.config.n_tokens, 1))
    return W, transpose(W)


@torch.no_grad()
def als_iteration(s: Collaborative, by_user: tuple, by_item: tuple, alpha: float, reg: float, steps: int,
                  bags: tuple | None = None, loss: bool = True, token_steps: int | None = None) -> float | None:
    """One ALS iteration of a scorer's tables, in place: users, then items (with `bags` =
    item_bags(s) for mf_tokens: users, the warm item rows, then the token table, item vectors
    y_i = warm_i V[i] + (W E)[i]; token_steps CG steps for the table, default `steps`). Returns
    the objective after it (als_loss; None with loss=False: one SDDMM pass less)."""
    U, V = s.user_emb.weight, s.item_emb.weight
    if bags is None:
        solve_side(U, V, *by_user, alpha, reg, steps)
        solve_side(V, U, *by_item, alpha, reg, steps)
        return als_loss(U, V, *by_user, alpha, reg) if loss else None
    W, WT = bags
    E, warm = s.token_emb.weight, s.item_warm
    solve_side(U, s.item_rows()[0], *by_user, alpha, reg, steps)
    rest = torch.empty_like(V)
    solve_side(V, U, *by_item, alpha, reg, steps, offset=W @ E, rest=rest)
    V[~warm] = 0.0
    solve_tokens(E, U, V, W, WT, *by_item, warm, alpha, reg, steps if token_steps is None else token_steps, rest)
    if not loss:
        return None
    penalty = reg * float(U.double().pow(2).sum() + V.double().pow(2).sum() + E.double().pow(2).sum())
    return als_loss(U, s.item_rows()[0], *by_user, alpha, reg, penalty)


class ALSModule(RankingModule):
    """One ALS iteration per epoch (users, then items) of a collaborative scorer, validated
    like every learned model (RankingModule); no optimiser, no gradients."""

    def __init__(self, scorer: Collaborative, eval_sets: dict, pairs: np.ndarray, alpha: float = 2.0,
                 reg: float = 1.0, cg_steps: int = 3, token_steps: int | None = None, ks: tuple[int, ...] = (10, 20)):
        if (scorer.pools_tokens and not scorer.item_tokens) or scorer.item_bias is not None:   # the spec
            raise ValueError("ALS trains the collaborative tables (and item tokens): no profiles, no item bias")
        if not (alpha >= 0 and reg > 0 and isinstance(cg_steps, int) and cg_steps >= 1):
            raise ValueError(f"model.optim: alpha={alpha} must be >= 0, reg={reg} > 0 and cg_steps={cg_steps} "
                             f"an integer >= 1")
        if token_steps is not None and (isinstance(token_steps, bool) or not isinstance(token_steps, int)
                                        or token_steps < 1):
            raise ValueError(f"model.optim.token_steps={token_steps!r} must be an integer >= 1 (or null: cg_steps)")
        super().__init__(scorer, eval_sets, ks)
        self.save_hyperparameters(ignore=["scorer", "eval_sets", "pairs"])
        self.automatic_optimization = False
        n_users, n_items = scorer.config.n_users, scorer.config.n_items
        for name, (indptr, indices) in (("by_user", csr(pairs, n_users)), ("by_item", csr(pairs[:, ::-1], n_items))):
            self.register_buffer(f"{name}_indptr", indptr, persistent=False)
            self.register_buffer(f"{name}_indices", indices, persistent=False)
        self._bags = None                   # mf_tokens: (W, W^T), built on the scorer's device

    def training_step(self, batch, batch_idx):
        h, s = self.hparams, self.scorer
        by_user, by_item = (self.by_user_indptr, self.by_user_indices), (self.by_item_indptr, self.by_item_indices)
        with torch.no_grad():
            loss = als_iteration(s, by_user, by_item, h.alpha, h.reg, h.cg_steps,
                                 self._item_bags() if s.item_tokens else None, token_steps=h.token_steps)
        n = max(len(self.by_user_indices), 1)
        self.log("train/loss", loss / n, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)

    def _item_bags(self):
        """(W, W^T) of item_bags, once, on the scorer's device."""
        if self._bags is None:
            self._bags = item_bags(self.scorer)
        return self._bags

    def configure_optimizers(self):
        return None


def iteration_loader() -> DataLoader:
    """One step an epoch: ALSModule's training_step is the whole iteration."""
    return DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)
