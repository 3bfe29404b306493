"""Memory-based and closed-form scorers: ItemKNN, UserKNN, content KNN, EASE, popularity, and
the alpha blend of any two. Same interface as the learned `Scorer` (config, item_tables,
score_users, forward, hist_* buffers), so they share ranking, evaluation, export and the
`Recommender`. All state is plain tensors (CSR arrays), so exports stay safetensors-only.

Scores for a chunk of b users (H = the users' training histories as a (b, I) dense block):

    itemknn      direction=candidate (default): s[u, i] = sum_{j in H(u) and N_k(i)} x[u, j] sim(i, j),
                 a candidate sums the similarities of the user's items among its own k
                 neighbours (Sarwar et al. 2001);
                 direction=history: s[u, i] = sum_{j in H(u), i in N_k(j)} x[u, j] sim(j, i),
                 each history item votes for its own k neighbours (Deshpande & Karypis 2004,
                 implicit). Same W, read in the two directions; on ml-latest-small candidate
                 ranks better (NDCG@10 0.235 vs 0.168), history costs less (nnz(H) x k products;
                 candidate: popular items are in many neighbourhoods)
    content_knn  the same with W from the items' TF-IDF token vectors (cold items get neighbours)
    userknn      s[u, i] = sum_{v in N(u)} W[u, v] x[v, i]
    (x = 1 with values=binary, the rating with values=rating)
    ease         s[u, :] = x_u B,  B = I - P diagMat(1 / diag(P)),  P = (X^T X + lambda I)^-1
    popularity   s[u, i] = number of training interactions of i

`normalize=True` divides a KNN score by the sum of the similarities that contributed to it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from recsys.sparse.similarity import _t, select_rows, sparse_rows, topk_neighbours
from recsys.sparse.spgemm import DENSE_RATIO, RightOperand, Workspace, column_counts, heavy_columns

KNN_KINDS = ("itemknn", "userknn", "content_knn")
FILLED_KINDS = ("itemknn", "userknn", "ease")    # collaborative kinds that can fill cold items (coldstart.py)


@dataclass
class MemoryConfig:
    kind: str
    n_users: int
    n_items: int
    similarity: str = "cosine"
    k: int = 100
    shrink: float = 0.0
    values: str = "binary"        # binary | rating: the matrix the similarity is computed on
    normalize: bool = False
    block_size: int = 256
    max_products: int = 2_000_000   # scalar products materialised at once: bounds the kernel's memory
    dense_ratio: float = DENSE_RATIO  # heavy-column threshold of the sparse kernel (spgemm.py)
    direction: str = "candidate"  # itemknn / content_knn: candidate | history (see module docstring)
    lam: float = 200.0            # EASE L2 weight
    max_items: int = 20000        # EASE refuses larger catalogs (memory 3 x 4 x I^2 bytes)
    n_tokens: int = 0             # size of the token vocabulary of the stored item bags
    cold_k: int = 0               # itemknn/userknn/ease: cold items borrow the scores of this many
    cold_scale: float = 1.0       # content neighbours, times cold_scale (coldstart.py)

    @property
    def variant(self) -> str:
        return self.kind

    def to_json(self) -> dict:
        return asdict(self)


class MemoryScorer(nn.Module):
    """Holds the user histories (CSR) plus the fitted item/user tables of one kind."""

    parallel_chunks = True     # ranking may score chunks on several threads (per-thread tables["ws"])

    def __init__(self, config: MemoryConfig, buffers: dict[str, torch.Tensor]):
        super().__init__()
        self.config = config
        if config.kind not in (*KNN_KINDS, "ease", "popularity"):
            raise ValueError(f"unknown memory-based model kind {config.kind!r}")
        for name, t in buffers.items():
            self.register_buffer(name, torch.as_tensor(t).clone())

    # --- fitting ----------------------------------------------------------------------------

    @classmethod
    def fit(cls, config: MemoryConfig, hist_indptr, hist_indices, hist_values=None,
            tok_indptr=None, tok_indices=None, tok_weights=None, n_tokens: int = 0,
            device: str | torch.device = "cpu") -> "MemoryScorer":
        """hist_*: each user's training items (CSR, values = ratings or None); tok_*: the
        items' TF-IDF token bags (content_knn only)."""
        c = config
        dev = torch.device(device)
        hist_indptr, hist_indices = hist_indptr.to(dev), hist_indices.to(dev)
        vals = hist_values.to(dev).float() if (hist_values is not None and c.values == "rating") else None
        if c.direction not in ("candidate", "history"):
            raise ValueError(f"model.direction={c.direction!r} must be 'candidate' or 'history'")
        if c.values not in ("binary", "rating"):
            raise ValueError(f"model.values={c.values!r} must be 'binary' or 'rating'")
        buffers = {"hist_indptr": hist_indptr, "hist_indices": hist_indices,
                   "hist_values": vals if vals is not None else torch.ones(len(hist_indices), device=dev)}
        if tok_indptr is not None:   # the items' token bags: content_knn's input, and what items
            buffers.update(tok_indptr=tok_indptr.to(dev), tok_indices=tok_indices.to(dev),   # added later
                           tok_weights=tok_weights.to(dev).float())                         # are compared with
            if c.n_tokens == 0:
                c.n_tokens = int(n_tokens)
        X = sparse_rows(hist_indptr, hist_indices, buffers["hist_values"], c.n_items)     # (U, I)
        if c.kind in ("itemknn", "content_knn"):
            if c.kind == "itemknn":
                src = _t(X)                                                      # (I, U)
            else:
                if tok_indptr is None:
                    raise ValueError("content_knn needs the items' token bags")
                src = sparse_rows(tok_indptr.to(dev), tok_indices.to(dev), tok_weights.to(dev), n_tokens)
            W = topk_neighbours(src, c.similarity, c.k, c.shrink, c.block_size, c.max_products, c.dense_ratio)  # (I, I)
            buffers.update(_csr_buffers(W, "w"))
        elif c.kind == "userknn":
            W = topk_neighbours(X, c.similarity, c.k, c.shrink, c.block_size, c.max_products, c.dense_ratio)  # (U, U)
            buffers.update(_csr_buffers(W, "w"))
        elif c.kind == "ease":
            if c.n_items > c.max_items:
                raise ValueError(f"EASE needs {3 * 4 * c.n_items ** 2 / 2 ** 30:.1f} GiB for {c.n_items} items "
                                 f"(O(items^2)); model.max_items={c.max_items}. Raise it if the memory is there.")
            # G = X^T X with the sparse kernel (heavy users by GEMM), row block by row block,
            # written straight into G; then P = G^-1 by Cholesky (G + lambda I is symmetric
            # positive definite), in place of G where possible
            XT = _t(X)                                                                   # (I, U)
            cc = column_counts(XT)
            op = RightOperand(XT, heavy_columns(cc, cc, c.n_items, c.n_items, c.dense_ratio))
            G = torch.empty(c.n_items, c.n_items, dtype=XT.values().dtype, device=dev)
            ws = Workspace()
            op.product_bounded(XT, G, ws, c.max_products)
            del ws
            G.diagonal().add_(c.lam)
            L = torch.linalg.cholesky(G)
            del G
            P = torch.cholesky_inverse(L)
            del L
            if not P.is_contiguous():    # LAPACK hands back column-major; P is symmetric, so P.T
                P = P.T if P.T.is_contiguous() else P.contiguous()   # is the same matrix, row-major
            B = P.div_((-P.diagonal()).clone()[None, :])                                 # in place
            B.diagonal().zero_()
            buffers["ease_B"] = B
        else:  # popularity
            buffers["pop"] = torch.bincount(hist_indices, minlength=c.n_items).float()
        return cls(c, buffers)

    def set_fill(self, fill_indptr: torch.Tensor, fill_indices: torch.Tensor, fill_weights: torch.Tensor) -> None:
        """The cold items' fill matrix (coldstart.py), applied to every score block."""
        for name, t in (("fill_indptr", fill_indptr), ("fill_indices", fill_indices), ("fill_weights", fill_weights)):
            self.register_buffer(name, t.clone())

    def _fill(self, s: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "fill_indptr"):
            return s
        from recsys.models.coldstart import fill_scores
        return fill_scores(s, self.fill_indptr, self.fill_indices, self.fill_weights)

    # --- scoring ----------------------------------------------------------------------------

    def _hist(self) -> torch.Tensor:
        c = self.config
        return torch.sparse_csr_tensor(self.hist_indptr, self.hist_indices, self.hist_values, (c.n_users, c.n_items))

    def item_tables(self) -> dict:
        """The right-hand operands of the scoring products, prepared once per ranking pass:
        itemknn/content_knn score H @ W^T or H @ W (direction), userknn W_u @ X."""
        c = self.config
        t: dict = {"ws": Workspace()}
        if c.kind in ("itemknn", "content_knn"):
            W = torch.sparse_csr_tensor(self.w_indptr, self.w_indices, self.w_values, (c.n_items, c.n_items))
            # scores = H @ B^T: B = W (candidate direction) or W^T (history direction)
            B = W if c.direction == "candidate" else _t(W)                            # (I, I)
            pop = torch.bincount(self.hist_indices, minlength=c.n_items)             # (I,) nnz of H's columns
            heavy = heavy_columns(pop, column_counts(B), c.n_users, c.n_items, c.dense_ratio)
            t["WT"] = RightOperand(B, heavy)
            if c.normalize:
                t["absWT"] = RightOperand(_abs(B), heavy)
        if c.kind == "userknn":
            W = torch.sparse_csr_tensor(self.w_indptr, self.w_indices, self.w_values, (c.n_users, c.n_users))
            XT = _t(self._hist())                                                     # (I, U)
            heavy = heavy_columns(column_counts(W), column_counts(XT), c.n_users, c.n_items, c.dense_ratio)
            t["W"] = W
            t["XT"] = RightOperand(XT, heavy)
            if c.normalize:
                t["MT"] = RightOperand(_ones(XT), heavy)
        return t

    def score_users(self, users: torch.Tensor, tables: dict, out: torch.Tensor | None = None) -> torch.Tensor:
        """(b,) users -> (b, I) scores (written into `out` when given)."""
        c = self.config
        if c.kind == "userknn":
            return self._fill(self._userknn_votes(select_rows(tables["W"], users), tables, out))   # W rows (b, U)
        H = select_rows(self._hist(), users)                                      # (b, I) sparse
        return self.score_histories(H, tables, out)

    def score_histories(self, H: torch.Tensor, tables: dict, out: torch.Tensor | None = None) -> torch.Tensor:
        """(b, I) sparse CSR history rows (of any users, known or not) -> (b, I) scores.
        userknn: neighbours among the known users, found with the fitted similarity."""
        c = self.config
        if c.kind == "popularity":
            return self.pop.expand(H.shape[0], -1).clone()
        if c.kind == "ease":
            # s[u] = sum_j x_uj B[j]: a weighted sum of rows of B per user (an embedding bag),
            # work nnz(H) x I reads, no (b, I) temporary besides the result
            # (`out` is not used: embedding_bag has no out=, and a copy would be one more pass)
            return self._fill(torch.nn.functional.embedding_bag(
                H.col_indices(), self.ease_B, H.crow_indices()[:-1],
                mode="sum", per_sample_weights=H.values().to(self.ease_B.dtype)))
        if c.kind in ("itemknn", "content_knn"):
            out = _out(out, H.shape[0], c.n_items, H.values())
            s = tables["WT"].product_bounded(H, out, tables.get("ws"), c.max_products)    # (b, I)
            if c.normalize:
                den = tables["absWT"].product_bounded(_ones(H), torch.empty_like(s), tables.get("ws"), c.max_products)
                s = _normalise(s, den)
            return self._fill(s)
        if c.kind == "userknn":
            return self._fill(self._userknn_histories(H, tables, out))
        raise ValueError(f"unknown memory-based model kind {c.kind!r}")

    def _userknn_histories(self, H: torch.Tensor, tables: dict, out: torch.Tensor | None) -> torch.Tensor:
        """UserKNN for users outside the model: each history row's k most similar known users
        (the fitted similarity, computed on the known users' rows stacked with the new rows;
        the new rows are not each other's neighbours), then the same aggregation as score_users."""
        from recsys.sparse.similarity import _Prepared
        c = self.config
        X = self._hist()                                                              # (U, I)
        U, b = c.n_users, H.shape[0]
        vals = H.values().to(X.values().dtype)
        Z = torch.sparse_csr_tensor(torch.cat([X.crow_indices(), H.crow_indices()[1:] + X.crow_indices()[-1]]),
                                    torch.cat([X.col_indices(), H.col_indices()]), torch.cat([X.values(), vals]),
                                    (U + b, c.n_items))
        sim = _Prepared(Z, c.similarity, c.shrink, c.dense_ratio).block(U, U + b)[:, :U].float()   # (b, U)
        v, i = torch.topk(sim, min(c.k, U), dim=1)
        keep = v > 0
        crow = torch.zeros(b + 1, dtype=torch.long, device=v.device)
        crow[1:] = torch.cumsum(keep.sum(1), 0)
        return self._userknn_votes(torch.sparse_csr_tensor(crow, i[keep], v[keep], (b, U)), tables, out)

    def _userknn_votes(self, Wb: torch.Tensor, tables: dict, out: torch.Tensor | None) -> torch.Tensor:
        """(b, U) sparse neighbour weights -> (b, I) scores: s = Wb @ X (normalised by the
        neighbours' weights on each item with normalize=True)."""
        c = self.config
        out = _out(out, Wb.shape[0], c.n_items, Wb.values())
        s = tables["XT"].product_bounded(Wb, out, tables.get("ws"), c.max_products)   # (b, I)
        if c.normalize:
            den = tables["MT"].product_bounded(_abs(Wb), torch.empty_like(s), tables.get("ws"), c.max_products)
            s = _normalise(s, den)
        return s

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_users(users, self.item_tables())

    @classmethod
    def from_export(cls, config: dict, state: dict) -> "MemoryScorer":
        cfg = MemoryConfig(**config)
        need = {"itemknn": ["w_indptr", "w_indices", "w_values"], "content_knn": ["w_indptr", "w_indices", "w_values"],
                "userknn": ["w_indptr", "w_indices", "w_values"],
                "ease": ["ease_B"], "popularity": ["pop"]}[cfg.kind] + ["hist_indptr", "hist_indices", "hist_values"]
        missing = [n for n in need if n not in state]
        if missing:
            raise KeyError(f"missing tensors {missing}")
        need += [n for n in ("tok_indptr", "tok_indices", "tok_weights") if n in state]
        m = cls(cfg, {n: state[n] for n in need})
        if "fill_indptr" in state:
            m.set_fill(state["fill_indptr"], state["fill_indices"], state["fill_weights"])
        return m


def _csr_buffers(W: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}_indptr": W.crow_indices().long(), f"{prefix}_indices": W.col_indices().long(),
            f"{prefix}_values": W.values().float()}


def _out(out: torch.Tensor | None, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    if out is None or out.shape != (rows, cols) or not out.is_contiguous():
        return torch.empty(rows, cols, dtype=like.dtype, device=like.device)
    return out


def _ones(W: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(W.crow_indices(), W.col_indices(), torch.ones_like(W.values()), W.shape)


def _abs(W: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(W.crow_indices(), W.col_indices(), W.values().abs(), W.shape)


def _normalise(s: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """In place: s / den where den > 0, else 0."""
    return s.div_(den.masked_fill_(den <= 0, float("inf")))


@dataclass
class BlendConfig:
    n_users: int
    n_items: int
    alpha: float
    first: dict
    second: dict
    kind: str = "blend"
    norm: str = "zscore"          # per-user normalisation of each part: zscore | max

    @property
    def variant(self) -> str:
        name = lambda part: part.get("kind") or part.get("variant")        # learned parts: their variant
        return f"blend({name(self.first)},{name(self.second)})"

    def to_json(self) -> dict:
        return asdict(self)


BLEND_NORMS = ("zscore", "max")


class Blend(nn.Module):
    """alpha * n_u(first) + (1 - alpha) * n_u(second), n_u a per-user normalisation over the
    catalog, for any two scorers (typically a collaborative model and a content model):

    zscore  (s - mean_u) / std_u, as in the learned hybrid (scorer.py): right for dense scores;
    max     s / max_u |s|: right for sparse scores such as KNN votes, where most items score 0
            and the z-score of the few voted items is huge (it would swamp the other part)."""

    def __init__(self, first: nn.Module, second: nn.Module, alpha: float, norm: str = "zscore"):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"model.alpha={alpha} is outside [0, 1]")
        if norm not in BLEND_NORMS:
            raise ValueError(f"model.norm={norm!r} is not one of {BLEND_NORMS}")
        self.first, self.second = first, second
        self.config = BlendConfig(first.config.n_users, first.config.n_items, float(alpha),
                                  first.config.to_json(), second.config.to_json(), norm=norm)

    @property
    def hist_indptr(self) -> torch.Tensor:
        return self.first.hist_indptr

    @property
    def hist_indices(self) -> torch.Tensor:
        return self.first.hist_indices

    def item_tables(self) -> dict:
        return {"first": self.first.item_tables(), "second": self.second.item_tables()}

    def score_users(self, users: torch.Tensor, tables: dict) -> torch.Tensor:
        a = self.config.alpha
        return (a * self._norm(self.first.score_users(users, tables["first"]))
                + (1 - a) * self._norm(self.second.score_users(users, tables["second"])))

    def score_histories(self, H: torch.Tensor, tables: dict) -> torch.Tensor:
        """Histories of any users ((b, I) sparse CSR) -> (b, I), if both parts can score them."""
        a = self.config.alpha
        return (a * self._norm(self.first.score_histories(H, tables["first"]))
                + (1 - a) * self._norm(self.second.score_histories(H, tables["second"])))

    def _norm(self, s: torch.Tensor) -> torch.Tensor:
        if self.config.norm == "max":
            top = s.abs().amax(dim=1, keepdim=True)                                  # (b, 1)
            return s / torch.where(top > 0, top, torch.ones_like(top))
        from recsys.models.learned import Scorer
        return Scorer.standardise(s)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_users(users, self.item_tables())
