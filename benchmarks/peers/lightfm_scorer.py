"""LightFM (WARP) as a recsys scorer, so that recsys's own ranking and metric code
(`recsys.eval.evaluation.evaluate`, `evaluate_report`, `evaluate_histories`) measures it under exactly
the protocol of our models: every item ranked, seen items masked, the same metric definitions.

Model (fit by LightFM's own Cython code, `LightFM(loss="warp").fit`):

    interactions   X (U, I) binary: 1 per training (user, item) pair; every catalog item is a
                   column, cold items (no training pair) included, so WARP samples them as
                   negatives and pushes them down (cold_columns=False: fit on the warm columns
                   only and score cold items from their feature rows afterwards, as for items
                   added after training; see CAVEAT)
    item features  F (I, I + T) = row-L1-normalise([identity | token presence])
                   token presence: 1 where the item's text has the token (prep.bags' token ids;
                   binary is as good as the TF-IDF weights or slightly better on validation,
                   see DEFAULTS below);
                   row-L1 normalisation is what lightfm.data.Dataset does by default; a cold
                   item's row carries its tokens, so it is scored from its content
                   (use_tokens=False: F = identity, plain LightFM)
    user features  identity (LightFM's default)
    scores         s[u, i] = p_u . q_i + b_u + c_i,  q_i = F[i] @ E_item, c_i = F[i] @ b_item

The item representations (c, q) = `get_item_representations(F)` and the user ones are copied
into torch tensors once, after fitting; scoring is a torch matmul (equal to LightFM's `predict`
up to float32 rounding). b_u does not change a user's ranking.

New users (`score_histories`): LightFM has no fold-in for a user without user features, so the
user vector is folded in against the fixed item representations, from the history's items H:

    mean (default)   p = mean_{j in H} q_j
    ridge            p = argmin_p sum_{j in H} (1 - (p . q_j + c_j))^2 + lam |p|^2
                       = (Q_H^T Q_H + lam I)^-1 Q_H^T (1 - c_H),   lam = 1

mean ranks new users better: new-user NDCG@10 0.274 against 0.197 for ridge (lam = 1; 0.257
with lam = 10), and 0.350 against 0.258 on a second seed, on validation new-user splits of
random80's train file (10% of users, 61, held out, half of each history given); WARP scores are ranking margins, not calibrated to 1, so the
least-squares target fits them poorly. An empty history gives p = 0 (items ranked by c_i, a
popularity-like order). H is read as a set: its values are ignored.

Worked example: `s = fit_lightfm(prep)`; `s(torch.tensor([0, 2]))` -> (2, n_items) scores;
`recsys.eval.evaluation.evaluate(s, *eval_sets(prep)[...])` as for any recsys scorer.

`lightfm` (the `lightfm-next` distribution on PyPI) is a benchmark-only dependency: it is
imported inside `fit_lightfm`, so this module imports without it (a fitted scorer needs only
torch).

DEFAULTS (no_components 64, epochs 50, learning_rate 0.05, item_alpha 1e-5, binary tokens, mean
fold-in) come from validation on ml-latest-small-splits/random80 (10% per-user carve-out of
train, val NDCG@10, grid epochs {10, 20, 30, 50} x learning_rate {0.05, 0.02} x item_alpha
{0, 1e-6, 1e-5} x tokens {binary, TF-IDF, none}): learning_rate 0.05 beats 0.02 everywhere
(0.145 against 0.128 at best); 50 epochs beat 30 (0.144 against 0.140; 70-100 epochs no better);
item_alpha and binary against TF-IDF differ by less than the run-to-run noise of 2-thread fits
(val NDCG@10, mean of 3 seeds: binary 1e-5 0.144, 0 0.143, 1e-6 0.143; TF-IDF 1e-6 0.142).
Without tokens: 0.127.

CAVEAT, cold items: with cold items as columns (the default), WARP draws them as negatives all
through training, and their identity embedding and bias only ever get pushed down: on colditems
they rank at 6,800 on average against 4,500 for warm items, and cold-item Recall@20 is 0.000.
With cold_columns=False it is 0.006-0.009, and warm-item NDCG@10 drops from 0.320 to
0.305-0.309 (cold items now take list slots) (fit on train + validation, 2 seeds).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from recsys.models.base import Model

FOLD_IN = ("ridge", "mean")
TOKEN_VALUES = ("binary", "tfidf")


@dataclass
class LightFMConfig:
    n_users: int
    n_items: int
    n_tokens: int = 0
    use_tokens: bool = True
    token_values: str = "binary"     # item feature value of a present token: 1, or its TF-IDF weight
    no_components: int = 64
    epochs: int = 50
    learning_rate: float = 0.05
    item_alpha: float = 1e-5
    user_alpha: float = 1e-6
    loss: str = "warp"
    max_sampled: int = 10
    seed: int = 0
    fold_in: str = "mean"            # new users: "mean" of item vectors or "ridge" least squares
    fold_in_lam: float = 1.0
    cold_columns: bool = True        # cold items are columns of X during the fit (WARP negatives)

    def __post_init__(self):
        if self.fold_in not in FOLD_IN:
            raise ValueError(f"fold_in={self.fold_in!r} is not one of {FOLD_IN}")
        if self.token_values not in TOKEN_VALUES:
            raise ValueError(f"token_values={self.token_values!r} is not one of {TOKEN_VALUES}")

    def to_json(self) -> dict:
        return asdict(self)


def interaction_matrix(prep):
    """X: scipy COO (n_users, n_items) float32, 1 per distinct training pair."""
    import scipy.sparse as sp
    pairs = np.unique(prep.train, axis=0)                                  # (N, 2)
    return sp.coo_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])),
                         shape=(prep.n_users, prep.n_items))


def item_feature_matrix(prep, use_tokens: bool = True, token_values: str = "binary"):
    """F: scipy CSR (n_items, n_items [+ n_tokens]) float32, [identity | tokens] with each row
    L1-normalised (as lightfm.data.Dataset.build_item_features(normalize=True) does)."""
    import scipy.sparse as sp
    n = prep.n_items
    eye = sp.identity(n, dtype=np.float32, format="csr")
    if not use_tokens:
        return eye
    b = prep.bags
    vals = np.ones(len(b.indices), np.float32) if token_values == "binary" else b.weights.astype(np.float32)
    tok = sp.csr_matrix((vals, b.indices, b.indptr), shape=(n, len(prep.tokens)))
    F = sp.hstack([eye, tok], format="csr", dtype=np.float32)
    row_sum = np.asarray(F.sum(axis=1)).ravel()                             # >= 1: identity
    return sp.csr_matrix(sp.diags(1.0 / row_sum).astype(np.float32) @ F)


class LightFMScorer(Model):
    """A fitted LightFM model's representations behind recsys's model interface
    (recsys/models/base.py: config.n_users/n_items, item_side, score_users, score_histories)."""

    def __init__(self, config: LightFMConfig, user_emb, user_bias, item_emb, item_bias,
                 hist_indptr: torch.Tensor, hist_indices: torch.Tensor):
        """user_emb (U, D), user_bias (U,), item_emb (I, D), item_bias (I,): LightFM's
        representations (get_user_representations / get_item_representations(F));
        hist_indptr (U+1,), hist_indices (N,): the training histories as CSR."""
        super().__init__()
        self.config = config
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32).clone()
        self.register_buffer("user_emb", f32(user_emb))        # (U, D)
        self.register_buffer("user_bias", f32(user_bias))      # (U,)
        self.register_buffer("item_emb", f32(item_emb))        # (I, D)
        self.register_buffer("item_bias", f32(item_bias))      # (I,)
        self.register_buffer("hist_indptr", torch.as_tensor(hist_indptr, dtype=torch.long).clone())
        self.register_buffer("hist_indices", torch.as_tensor(hist_indices, dtype=torch.long).clone())
        if self.user_emb.shape[0] != config.n_users or self.item_emb.shape[0] != config.n_items:
            raise ValueError("representation sizes do not match n_users / n_items in the config")
        self.lightfm = None            # the fitted lightfm.LightFM, when built by fit_lightfm
        self.item_features = None      # its item feature matrix F (scipy CSR)

    @classmethod
    def from_lightfm(cls, model, item_features, prep, config: LightFMConfig) -> "LightFMScorer":
        """Copy a fitted lightfm.LightFM's representations (item side through item_features)."""
        from recsys.train.build import csr
        item_bias, item_emb = model.get_item_representations(item_features)
        user_bias, user_emb = model.get_user_representations()
        hist_indptr, hist_indices = csr(prep.train, prep.n_users)
        s = cls(config, user_emb, user_bias, item_emb, item_bias, hist_indptr, hist_indices)
        s.lightfm, s.item_features = model, item_features
        return s

    def item_side(self) -> dict[str, torch.Tensor]:
        return {"Q": self.item_emb, "c": self.item_bias}                   # (I, D), (I,)

    def score_users(self, users: torch.Tensor, tables: dict, out=None, ws=None) -> torch.Tensor:
        """(B,) user indices -> (B, I) scores p_u . q_i + c_i + b_u (LightFM's predict)."""
        users = users.to(self.user_emb.device)
        s = torch.addmm(tables["c"].expand(len(users), -1), self.user_emb[users], tables["Q"].T)
        return s.add_(self.user_bias[users, None])

    def fold_in(self, H: torch.Tensor, tables: dict, sub: int = 64) -> torch.Tensor:
        """(b, I) sparse CSR histories -> (b, D) user vectors (config.fold_in, module docstring).
        ridge: one D x D solve per user, padded per `sub` users (sub x longest history x D)."""
        Q, c = tables["Q"], tables["c"]
        crow, col = H.crow_indices(), H.col_indices()
        b, D = H.shape[0], Q.shape[1]
        lens = crow[1:] - crow[:-1]                                          # (b,)
        row_of = torch.repeat_interleave(torch.arange(b, device=crow.device), lens)
        if self.config.fold_in == "mean":
            P = torch.zeros(b, D, dtype=Q.dtype, device=Q.device).index_add_(0, row_of, Q[col])
            return P / lens.clamp(min=1).to(Q.dtype)[:, None]
        out = torch.zeros(b, D, dtype=Q.dtype, device=Q.device)
        eye = self.config.fold_in_lam * torch.eye(D, dtype=Q.dtype, device=Q.device)
        within = torch.arange(len(col), device=crow.device) - crow[row_of]
        for s0 in range(0, b, sub):
            s1 = min(b, s0 + sub)
            L = int(lens[s0:s1].max()) if s1 > s0 else 0
            if L == 0:
                continue
            sel = slice(int(crow[s0]), int(crow[s1]))
            Qp = torch.zeros(s1 - s0, L, D, dtype=Q.dtype, device=Q.device)   # (b', L, D), 0-padded
            r = torch.zeros(s1 - s0, L, dtype=Q.dtype, device=Q.device)       # (b', L) residual targets
            Qp[row_of[sel] - s0, within[sel]] = Q[col[sel]]
            r[row_of[sel] - s0, within[sel]] = 1.0 - c[col[sel]]
            G = Qp.transpose(1, 2) @ Qp + eye                                   # (b', D, D)
            out[s0:s1] = torch.linalg.solve(G, (Qp * r[..., None]).sum(1))
        return out

    def score_histories(self, H: torch.Tensor, tables: dict, out=None, ws=None) -> torch.Tensor:
        """(b, I) sparse CSR histories of users outside the training data -> (b, I) scores
        p . q_i + c_i with p folded in (no user bias: it does not change the ranking)."""
        P = self.fold_in(H, tables)                                         # (b, D)
        return torch.addmm(tables["c"].expand(P.shape[0], -1), P, tables["Q"].T)


def fit_lightfm(prep, no_components: int = 64, epochs: int = 50, learning_rate: float = 0.05,
                item_alpha: float = 1e-5, user_alpha: float = 1e-6, loss: str = "warp",
                max_sampled: int = 10, num_threads: int = 2, seed: int = 0, use_tokens: bool = True,
                token_values: str = "binary", fold_in: str = "mean", fold_in_lam: float = 1.0,
                cold_columns: bool = True) -> LightFMScorer:
    """Fit LightFM on prep.train (a recsys.data.prepare.Prepared) and wrap it as a scorer. With
    num_threads > 1 LightFM's Hogwild updates make a fit vary slightly from run to run even with
    a fixed seed. With cold_columns=False the wrapped `scorer.lightfm` numbers its items by warm
    column (its `predict` takes those indices); the scorer itself always ranks the whole catalog."""
    from lightfm import LightFM
    cfg = LightFMConfig(prep.n_users, prep.n_items, len(prep.tokens), use_tokens, token_values,
                        no_components, epochs, learning_rate, item_alpha, user_alpha, loss,
                        max_sampled, seed, fold_in, fold_in_lam, cold_columns)
    F = item_feature_matrix(prep, use_tokens, token_values)                # (I, I [+ T])
    X, F_fit = interaction_matrix(prep), F
    if not cold_columns:             # cold identity rows stay at LightFM's init (tiny, bias 0)
        warm = prep.item_warm()
        X, F_fit = X.tocsc()[:, warm].tocoo(), F[warm]
    model = LightFM(no_components=no_components, learning_rate=learning_rate, loss=loss,
                    item_alpha=item_alpha, user_alpha=user_alpha, max_sampled=max_sampled,
                    random_state=seed)
    model.fit(X, item_features=F_fit, epochs=epochs, num_threads=num_threads)
    return LightFMScorer.from_lightfm(model, F, prep, cfg)
