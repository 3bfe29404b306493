"""The sequence model: a causal transformer over each user's items in time order, whose next-item
scores are one matmul of its last hidden state against the catalog's item table.

    E[i] = warm[i] * V[i] + C[i]            item token: id row (warm items only) + content
    C[i] = sum_t w(i, t) T[t]               TF-IDF weighted pool of the content-token table
    x_p  = E[s_p] + P[p]                    the newest max_len items s_0..s_{n-1}, oldest first,
                                            right-padded (a causal mask alone keeps every real
                                            position off the padding: the fast attention kernels)
    h    = LN(blocks(x))                    pre-LN blocks: causal self-attention
                                            (scaled_dot_product_attention) and a GELU MLP
    s[u, i] = h_{n-1} . E[i]                (b, D) @ (D, I): next-item scores of the catalog

Items with no training interaction ("cold": new in the catalog, or added later with grow())
have no trained id row (warm[i] = 0, so their V rows never train) and are read and scored from
their content tokens; with cold_k > 0, at ranking time (eval mode) their id row is borrowed from
their cold_k most content-similar warm items (models/coldstart.py: V[c] = cold_scale x the
cosine-weighted mean of the neighbours' rows), so an item never seen in training is reachable.
With cold_boost > 0 the ranking scores (eval mode) are the log-probabilities of a mixture that
gives the C cold items together the share pi of the next event that C items would have if each
were cold_boost times as likely as an average one of the W warm items (mix_cold; "auto", the
default, is that ratio as measured on the validation events, set when the model is built):

    pi   = cold_boost C / (cold_boost C + W)
    p(i) = (1 - pi) softmax over warm items of s[u, :]_i                   i warm
    p(c) = pi       softmax over cold items of (s[u, :] / cold_temp)_c     c cold

New items are consumed far above an average item's rate on a next-item split (leave-last
validation: 20 of 610 next events went to the 61 items with no training event, 5.4x a warm
item's rate) and far below it on a random holdout (its cold items are the rarest ones), which
logits trained only on items that had events cannot know; the warm items keep their order.

A known user is ranked from the stored training sequence (seq_indptr, seq_indices: time order,
ties in file order); a user outside the model, or a served user with live events, from the
given history, whose CSR row must list the items in the order they happened
(reads_order = True: the Recommender keeps the order it is given). Nothing is refit.
cache_users() stores every known user's last hidden state (user_state (U, D), in the state_dict
and the export), so ranking known users is one matmul and a top-k, like matrix factorisation;
the cache is dropped whenever the module is put in training mode.

Training (train/sequence_module.py) predicts every next item of each window: full softmax
over the catalog, or sampled softmax with logQ correction (sampled_logits) for large catalogs.

Worked example (shapes): 3 users, 5 items, 7 tokens, dim 4, max_len 6;
`m.score(torch.tensor([0, 2]), m.item_side())` -> (2, 5); `m.encode(torch.tensor([[3, 1, -1]]))`
-> (1, 3, 4) hidden states (-1 pads). The module has no Lightning, Hydra or pandas.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.base import Model, is_histories
from recsys.models.coldstart import fill_table
from recsys.models.extend import cat_bags, fill_rows
from recsys.models.learned.rows import bag_entries
from recsys.models.similar import DenseCosine


@dataclass
class SequenceConfig:
    n_users: int
    n_items: int
    n_tokens: int
    kind: str = "sequence"
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 200          # items read per user (the newest)
    dropout: float = 0.2
    attn_dropout: float | None = None   # dropout of the attention weights (None: dropout's)
    content: bool = True        # item tokens carry their pooled content tokens (C above)
    init_std: float = 0.02
    cold_k: int = 10            # cold items borrow id rows from this many content neighbours
    cold_scale: float = 1.0     # ... times this factor (10 and 1: chosen on leave-last validation NDCG)
    cold_boost: float | str = "auto"   # a cold item's prior next-event rate / a warm item's (0: raw
                                # logits; auto: measured on the validation part, train/build.py
                                # cold_rate; unresolved, as 0)
    cold_temp: float = 1.0      # temperature of the cold items' softmax in their share (1: by the
                                # validation targets' log-probability; benchmarks/README.md)

    def __post_init__(self):
        for name in ("dim", "blocks", "heads", "max_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model.{name}={v!r} must be an integer >= 1")
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} must be a multiple of model.heads={self.heads}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.attn_dropout is not None and not 0.0 <= float(self.attn_dropout) < 1.0:
            raise ValueError(f"model.attn_dropout={self.attn_dropout} must be in [0, 1) or null (dropout's)")
        if not float(self.init_std) > 0:
            raise ValueError(f"model.init_std={self.init_std} must be > 0")
        if isinstance(self.cold_k, bool) or not isinstance(self.cold_k, int) or self.cold_k < 0:
            raise ValueError(f"model.cold_k={self.cold_k!r} must be an integer >= 0")
        if not 0 < float(self.cold_scale) < float("inf"):
            raise ValueError(f"model.cold_scale={self.cold_scale} must be a finite number > 0")
        if self.cold_boost != "auto" and (isinstance(self.cold_boost, (bool, str))
                                          or not 0.0 <= float(self.cold_boost) < float("inf")):
            raise ValueError(f"model.cold_boost={self.cold_boost!r} must be a finite number >= 0 or 'auto'")
        if not 0 < float(self.cold_temp) < float("inf"):
            raise ValueError(f"model.cold_temp={self.cold_temp} must be a finite number > 0")

    def to_json(self) -> dict:
        return asdict(self)


# data buffers (all in the state_dict, so an export is complete): token bags, the training
# sequences in time order, the bag of training items (similar users/items), warm items
BUFFERS = ("tok_indptr", "tok_indices", "tok_weights", "seq_indptr", "seq_indices", "hist_indptr",
           "hist_indices", "item_warm", "fill_indptr", "fill_indices", "fill_weights")


@dataclass(frozen=True)
class SequenceItems:
    """Everything item-side, once per ranking pass: E (I, D), the item tokens' table; cold (C,)
    the cold items' indices when their scores are mixed in (cold_boost > 0, eval mode; else
    None) and share, their share pi of the next event."""
    E: torch.Tensor
    cold: torch.Tensor | None = None
    share: float = 0.0


class Dropout(nn.Module):
    """nn.Dropout with its mask drawn as rand_like(x) < 1 - p: on the CPU half the time of the
    bernoulli_ draw nn.Dropout makes (those draws were an eighth of a training step at 100,000
    items). The same distribution; no state, so exports are unchanged."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        return x * (torch.rand_like(x) < keep).to(x.dtype).mul_(1.0 / keep)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)). (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, heads: int, dropout: float, attn_dropout: float | None = None):
        super().__init__()
        self.heads, self.dropout = heads, dropout if attn_dropout is None else attn_dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,                  # (B, H, L, D/H)
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.mlp(self.ln2(x)))


class Sequence(Model):
    kind = "sequence"
    writes_out = True
    reads_order = True          # a history's CSR row lists its items oldest first

    def __init__(self, config: SequenceConfig, buffers: dict[str, torch.Tensor]):
        super().__init__()
        self.config = c = config
        for name in BUFFERS:
            self.register_buffer(name, buffers[name])
        self.item_emb = nn.Embedding(c.n_items, c.dim)
        self.token_emb = nn.Embedding(max(c.n_tokens, 1), c.dim) if c.content else None
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.dropout, c.attn_dropout) for _ in range(c.blocks))
        self.ln = nn.LayerNorm(c.dim)
        self.drop = Dropout(c.dropout)
        for emb in (self.item_emb, self.token_emb, self.pos_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=c.init_std)
        # the known users' last hidden states (cache_users), valid while user_state_ok is true
        self.register_buffer("user_state", buffers.get("user_state", torch.zeros(c.n_users, c.dim)))
        self.register_buffer("user_state_ok", buffers.get("user_state_ok", torch.zeros((), dtype=torch.bool)))

    def train(self, mode: bool = True) -> "Sequence":
        if mode:                     # weights may change from here on: the cached states go stale
            self.user_state_ok.fill_(False)
        return super().train(mode)

    @torch.no_grad()
    def cache_users(self, chunk: int = 1024) -> "Sequence":
        """Compute user_state (U, D) for every known user (eval mode), users of similar length
        together; ranking known users then reads it instead of running the transformer."""
        self.eval()
        E = self.item_table()
        n = torch.diff(self.seq_indptr)
        order = torch.argsort(n, descending=True)
        for a in range(0, len(order), chunk):
            users = order[a:a + chunk]
            seqs, m = windows(self.seq_indptr, self.seq_indices, users, self.config.max_len)
            self.user_state[users] = self.last_hidden(seqs, m, E)
        self.user_state_ok.fill_(True)
        return self

    # --- item side --------------------------------------------------------------------------

    def item_table(self) -> torch.Tensor:
        """E (I, D): id rows of warm items (in eval mode cold items' borrowed ones, cold_k > 0)
        plus pooled content tokens."""
        E = self.item_emb.weight * self.item_warm[:, None].to(self.item_emb.weight.dtype)
        if not self.training and len(self.fill_indices):
            E = fill_table(E, self.fill_indptr, self.fill_indices, self.fill_weights)
        return E + self._content(self.tok_indices, self.tok_indptr[:-1], self.tok_weights, E)

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """(n,) item indices -> their rows of item_table() (n, D), built from those items'
        rows and tokens only (training with sampled negatives reads a few of a large catalog)."""
        if not self.training and len(self.fill_indices):      # borrowed rows need their neighbours'
            return self.item_table()[items]
        E = self.item_emb(items) * self.item_warm[items, None].to(self.item_emb.weight.dtype)
        tokens, weights, offsets = bag_entries(self.tok_indptr, self.tok_indices, self.tok_weights, items)
        return E + self._content(tokens, offsets, weights, E)

    def _content(self, tokens, offsets, weights, like: torch.Tensor) -> torch.Tensor:
        """The TF-IDF weighted pools of token rows, one bag per offset (0 without content)."""
        if self.token_emb is None or not len(tokens):
            return torch.zeros_like(like)
        return F.embedding_bag(tokens, self.token_emb.weight, offsets, mode="sum", per_sample_weights=weights)

    def item_side(self) -> SequenceItems:
        boost = 0.0 if self.config.cold_boost == "auto" else float(self.config.cold_boost)
        if self.training or boost == 0:
            return SequenceItems(self.item_table())
        cold = torch.nonzero(~self.item_warm).flatten()
        C, W = len(cold), self.config.n_items - len(cold)
        if C == 0 or W == 0:                                  # nothing to mix: one kind of item
            return SequenceItems(self.item_table())
        return SequenceItems(self.item_table(), cold, boost * C / (boost * C + W))

    # --- the transformer --------------------------------------------------------------------

    def encode(self, seqs: torch.Tensor, E: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) item indices oldest first, -1 = padding (right), L <= max_len -> (B, L, D)
        hidden states; position p's state has read items 0..p of its row."""
        E = self.item_table() if E is None else E
        B, L = seqs.shape
        x = E[seqs.clamp(min=0)] * math.sqrt(self.config.dim) + self.pos_emb.weight[:L]   # (B, L, D)
        x = self.drop(x) * (seqs >= 0)[..., None]
        for block in self.blocks:
            x = block(x)
        return self.ln(x)

    def last_hidden(self, seqs: torch.Tensor, n: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded windows and their lengths (B,) -> (B, D) the state after the
        newest item (an empty row: the state of position 0 over padding alone)."""
        h = self.encode(seqs, E)                                                      # (B, L, D)
        return h[torch.arange(len(n), device=h.device), (n - 1).clamp(min=0)]

    # --- scoring ------------------------------------------------------------------------------

    def score_users(self, users: torch.Tensor, side: SequenceItems, out=None, ws=None) -> torch.Tensor:
        """(b,) known users -> (b, I), from their stored training sequences."""
        return self.score_columns(users, side, None, out)

    def score_histories(self, H: torch.Tensor, side: SequenceItems, out=None, ws=None) -> torch.Tensor:
        """(b, I) sparse CSR histories, each row's items oldest first -> (b, I)."""
        return self.score_columns(H, side, None, out)

    def score_columns(self, who: torch.Tensor, side: SequenceItems, cols=None, out=None, ws=None) -> torch.Tensor:
        """(b, n) scores of the (n,) columns `cols` (None: the catalog) for known users (b,) or
        given histories (b, I) sparse CSR."""
        if is_histories(who):
            rows = torch.arange(who.shape[0], device=who.device)
            seqs, n = windows(who.crow_indices(), who.col_indices(), rows, self.config.max_len)
        elif not self.training and bool(self.user_state_ok):
            seqs = None
        else:
            seqs, n = windows(self.seq_indptr, self.seq_indices, who, self.config.max_len)
        h = self.user_state[who] if seqs is None else self.last_hidden(seqs, n, side.E)   # (b, D)
        if side.cold is not None:        # the mixture's normalisers read every column
            use_out = out is not None and cols is None and not torch.is_grad_enabled()
            s = torch.mm(h, side.E.t(), out=out) if use_out else h @ side.E.t()      # (b, I)
            s = mix_cold(s, side.cold, side.share, self.config.cold_temp)
            return s if cols is None else s[:, cols]
        E = side.E if cols is None else side.E[cols]                                  # (n, D)
        if out is not None and not torch.is_grad_enabled():
            return torch.mm(h, E.t(), out=out)
        return h @ E.t()                                                              # (b, n)

    # --- similar items and users ----------------------------------------------------------------

    def own_spaces(self, of: str) -> tuple[str, ...]:
        return ("sequence",) if of == "items" else ()

    def default_space(self, of: str) -> str:
        return "sequence" if of == "items" else "history"

    def own_similarity(self, of: str, space: str):
        return DenseCosine([self.item_table().detach()], [1.0])

    @torch.no_grad()
    def projector_tables(self) -> dict[str, torch.Tensor]:
        return {"items/sequence": self.item_table().detach()}

    # --- export and new items ---------------------------------------------------------------------

    @classmethod
    def declare_tensors(cls, c: SequenceConfig, spec, p: str = "") -> None:
        U, I, T, D = c.n_users, c.n_items, c.n_tokens, c.dim
        spec.add_csr(p + "tok", I, T, p + "tok_weights")
        spec.add_csr(p + "seq", U, I, None)
        spec.add_csr(p + "hist", U, I, None)
        spec.add(p + "item_warm", "BOOL", I)
        spec.add_csr(p + "fill", I, I, p + "fill_weights")
        spec.add(p + "item_emb.weight", "F32", I, D)
        if c.content:
            spec.add(p + "token_emb.weight", "F32", max(T, 1), D)
        spec.add(p + "pos_emb.weight", "F32", c.max_len, D)
        for b in range(c.blocks):
            q = f"{p}blocks.{b}."
            for ln in ("ln1", "ln2"):
                spec.add(q + ln + ".weight", "F32", D)
                spec.add(q + ln + ".bias", "F32", D)
            spec.add(q + "qkv.weight", "F32", 3 * D, D)
            spec.add(q + "qkv.bias", "F32", 3 * D)
            spec.add(q + "proj.weight", "F32", D, D)
            spec.add(q + "proj.bias", "F32", D)
            spec.add(q + "mlp.0.weight", "F32", 4 * D, D)
            spec.add(q + "mlp.0.bias", "F32", 4 * D)
            spec.add(q + "mlp.2.weight", "F32", D, 4 * D)
            spec.add(q + "mlp.2.bias", "F32", D)
        spec.add(p + "ln.weight", "F32", D)
        spec.add(p + "ln.bias", "F32", D)
        spec.add(p + "user_state", "F32", U, D)
        spec.add(p + "user_state_ok", "BOOL")

    @classmethod
    def from_state(cls, config: dict, state: dict[str, torch.Tensor], rebuild=None) -> "Sequence":
        config = {"cold_boost": 0.0, **config}        # exports from before the mixture: raw logits
        model = cls(SequenceConfig(**config), {k: state[k] for k in BUFFERS + ("user_state", "user_state_ok")})
        model.load_state_dict(state, strict=True)
        return model

    def grow(self, bags) -> "Sequence":
        """The model with bags.n_items new items: cold (no id row), read and scored from their
        content tokens; no user's sequence changes."""
        c, m = self.config, bags.n_items
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state["tok_indptr"], state["tok_indices"], state["tok_weights"] = cat_bags(
            state["tok_indptr"], state["tok_indices"], state["tok_weights"], bags)
        warm = state["item_warm"]
        state["item_warm"] = torch.cat([warm, torch.zeros(m, dtype=torch.bool, device=warm.device)])
        W = state["item_emb.weight"]
        state["item_emb.weight"] = torch.cat([W, torch.zeros(m, W.shape[1], dtype=W.dtype, device=W.device)])
        state["fill_indptr"], state["fill_indices"], state["fill_weights"] = fill_rows(
            state, (state["fill_indptr"], state["fill_indices"], state["fill_weights"]), c.n_items, m, c.n_tokens,
            warm, c.cold_k, c.cold_scale)
        out = Sequence(replace(c, n_items=c.n_items + m), {k: state[k] for k in BUFFERS})
        out.load_state_dict(state, strict=True)      # the users' states too: new items are in no sequence
        out = out.to(self.tok_indices.device)
        return out.train(True) if self.training else out


def mix_cold(s: torch.Tensor, cold: torch.Tensor, share: float, temp: float, rows: int = 256) -> torch.Tensor:
    """In place: (b, I) next-item logits -> the log-probabilities of the mixture (module doc)

        log p(i) = s_i - logsumexp_warm(s) + log(1 - share)              i warm
        log p(c) = s_c / temp - logsumexp_cold(s / temp) + log(share)    c in `cold` (C,)

    Each row's exp sums to 1; the warm items keep their order. The warm normaliser is taken in
    blocks of `rows` rows (its temporary: rows x I floats)."""
    sc = torch.log_softmax(s[:, cold] / temp, 1) + math.log(share)                    # (b, C)
    if torch.is_grad_enabled():                      # out of place: autograd keeps its inputs
        off = torch.zeros(s.shape[1], dtype=s.dtype, device=s.device).index_fill_(0, cold, float("-inf"))
        warm = s - (torch.logsumexp(s + off, 1, keepdim=True) - math.log1p(-share))
        return warm.index_copy(1, cold, sc)
    s.index_fill_(1, cold, float("-inf"))
    for r in range(0, s.shape[0], rows):
        blk = s[r:r + rows]                                                           # (rows, I)
        blk.sub_(torch.logsumexp(blk, 1, keepdim=True) - math.log1p(-share))
    s[:, cold] = sc
    return s


def windows(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, length: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `length` entries of each of `rows` of a CSR matrix, in stored order, right-padded
    with -1, and their counts: (B,) rows -> ((B, w), (B,)), w = min(length, the longest row),
    at least 1."""
    start, end = indptr[rows], indptr[rows + 1]                                       # (B,)
    n = torch.clamp(end - start, max=length)                                          # (B,)
    w = max(int(n.max()) if len(rows) else 1, 1)
    pos = (end - n)[:, None] + torch.arange(w, device=rows.device)                     # (B, w)
    ok = pos < end[:, None]
    out = torch.full((len(rows), w), -1, dtype=torch.long, device=rows.device)
    out[ok] = indices[pos[ok]]
    return out, n
