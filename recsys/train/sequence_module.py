"""Lightning around the sequence model (models/sequence.py): batches of users, each read as the
window of its newest max_len + 1 training items; every position predicts the item after it.

    auto     full up to FULL_MAX_ITEMS items, sampled above (the (N, I) logits of a batch of
             long histories take N x I x 12 bytes with their gradient: 3 GB at 25,600
             positions x 10,000 items)
    full     cross-entropy over the whole catalog: h (N, D) @ E^T (D, I), N = the batch's
             positions with a next item
    sampled  cross-entropy over the true next item and n_neg negatives shared by the batch,
             drawn from the training items' popularity q, every logit corrected by -log(n_neg q)
             (logQ correction: the sampled softmax then estimates the full one); a negative
             equal to a position's true item is masked for that position

Only train.py (and tests) import this module; the model and exports do not need Lightning.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from recsys.models.sequence import Sequence, windows
from recsys.train.module import RankingModule, _EpochBatches, _rank_world

SEQUENCE_LOSSES = ("auto", "full", "sampled")
FULL_MAX_ITEMS = 20_000


class SequenceModule(RankingModule):
    def __init__(self, scorer: Sequence, eval_sets: dict, loss: str = "auto", n_neg: int = 1024,
                 lr: float = 2e-3, weight_decay: float = 0.0, ks: tuple[int, ...] = (10, 20)):
        if loss not in SEQUENCE_LOSSES:
            raise ValueError(f"model.optim.loss={loss!r} is not one of {SEQUENCE_LOSSES}")
        if n_neg < 1:
            raise ValueError(f"model.optim.n_neg={n_neg} must be >= 1")
        if not lr > 0:
            raise ValueError(f"model.optim.lr={lr} must be > 0")
        super().__init__(scorer, eval_sets, ks)
        self.save_hyperparameters(ignore=["scorer", "eval_sets"])
        self.loss = loss if loss != "auto" else ("full" if scorer.config.n_items <= FULL_MAX_ITEMS else "sampled")
        counts = torch.bincount(scorer.seq_indices, minlength=scorer.config.n_items).float()
        self.register_buffer("item_q", counts / counts.sum().clamp(min=1), persistent=False)   # (I,)

    def training_step(self, batch, batch_idx):
        m: Sequence = self.scorer
        users = batch[0]                                                              # (B,)
        seqs, _ = windows(m.seq_indptr, m.seq_indices, users, m.config.max_len + 1)   # (B, w), right-padded
        inp, tgt = seqs[:, :-1], seqs[:, 1:]                                          # (B, w-1)
        ok = (inp >= 0) & (tgt >= 0)
        if self.loss == "full":
            E = m.item_table()                                                        # (I, D)
            h = m.encode(inp, E)[ok]                                                  # (N, D)
            loss = F.cross_entropy(h @ E.t(), tgt[ok])                                # (N, I) logits
        else:
            loss = self._sampled(inp, tgt, ok)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=int(ok.sum()))
        return loss

    def _sampled(self, inp: torch.Tensor, tgt: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Sampled softmax with logQ correction over n_neg shared popularity-drawn negatives.
        Only the item tokens the batch reads or scores are built (Sequence.item_rows): at
        100,000 items, pooling and back-propagating the whole table each step took a quarter
        of the step."""
        m: Sequence = self.scorer
        q = self.item_q
        neg = torch.multinomial(q, self.hparams.n_neg, replacement=True)              # (S,)
        y = tgt[ok]                                                                   # (N,)
        items, inv = torch.unique(torch.cat([inp[inp >= 0], y, neg]), return_inverse=True)   # (n,)
        E = m.item_rows(items)                                                        # (n, D)
        local = torch.full_like(inp, -1)
        n_in = int((inp >= 0).sum())
        local[inp >= 0] = inv[:n_in]                                                  # inp in rows of E
        y_l, neg_l = inv[n_in:n_in + len(y)], inv[n_in + len(y):]
        h = m.encode(local, E)[ok]                                                    # (N, D)
        log_nq = torch.log(q * self.hparams.n_neg)                                    # (I,)
        return SampledSoftmax.apply(h, E[y_l], E[neg_l], log_nq[y], log_nq[neg], neg[None, :] == y[:, None])

    def configure_optimizers(self):
        """Adam, fused where torch has the kernel (CPU and CUDA): at 100,000 items the
        per-tensor loop of plain Adam took 130 ms a step over the tables, the fused one 22 ms."""
        params = list(self.parameters())
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
        return torch.optim.Adam(params, lr=self.hparams.lr, betas=(0.9, 0.98),
                                weight_decay=self.hparams.weight_decay, fused=fused)


class SampledSoftmax(torch.autograd.Function):
    """The mean over N positions of the cross-entropy of the true item against S shared
    negatives, each logit corrected by its -log(n_neg q):

        pos = <h, e_y> - log(n q_y)   (N,)      neg = h E_neg^T - log(n q_neg)   (N, S)
        loss = mean(logsumexp([pos, neg]) - pos)      (a negative equal to the row's y: -inf)

    written out so that its (N, S) logits are one buffer: the forward fills it in place, the
    backward turns it into the softmax in place (autograd's logsumexp and the cat before it
    each wrote the (N, S) matrix again: a third of a step at 100,000 items)."""

    @staticmethod
    def forward(ctx, h, pos_rows, neg_rows, pos_bias, neg_bias, collide):
        # h (N, D), pos_rows (N, D), neg_rows (S, D), pos_bias (N,), neg_bias (S,), collide (N, S) bool;
        # in float32 whatever autocast made of h (bf16-mixed): the backward needs one dtype
        with torch.autocast(device_type=h.device.type, enabled=False):
            h, pos_rows, neg_rows = h.float(), pos_rows.float(), neg_rows.float()
            pos = (h * pos_rows).sum(1) - pos_bias                                    # (N,)
            logits = torch.addmm(-neg_bias[None, :].float(), h, neg_rows.t())         # (N, S)
            logits.masked_fill_(collide, float("-inf"))
            lse = torch.logaddexp(pos, torch.logsumexp(logits, 1))                    # (N,)
        ctx.save_for_backward(h, pos_rows, neg_rows, logits, pos, lse)
        return (lse - pos).mean()

    @staticmethod
    def backward(ctx, grad):
        h, pos_rows, neg_rows, logits, pos, lse = ctx.saved_tensors
        g = grad / len(h)
        p = logits.sub_(lse[:, None]).exp_().mul_(g)                                  # (N, S) softmax * g
        p_pos = (torch.exp(pos - lse) - 1) * g                                        # (N,)
        grad_h = torch.addmm(p_pos[:, None] * pos_rows, p, neg_rows)                  # (N, D)
        return grad_h, p_pos[:, None] * h, p.t() @ h, None, None, None


class _LengthBatches(_EpochBatches):
    """The epoch's seeded shuffle cut into groups of `group` batches; within a group the users
    are sorted by sequence length, so a batch pads its rows to similar lengths (the transformer's
    cost is batch x the longest row), and the batches of the epoch are then shuffled."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int, group: int = 32):
        super().__init__(len(lengths), batch_size, seed)
        self.lengths, self.group = lengths, group

    def _batches(self) -> list[list[int]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        span = self.batch_size * self.group
        batches = []
        for a in range(0, len(order), span):
            part = order[a:a + span]
            part = part[torch.argsort(self.lengths[part], descending=True, stable=True)].tolist()
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class _BudgetBatches(_EpochBatches):
    """Batches of at most `budget` padded positions (rows x the longest row) instead of a fixed
    number of users: thousands of short histories in one batch, a few long ones in another, so
    that a step's cost no longer follows the lengths of its users. Each epoch sorts the users by
    length, breaking ties by a seeded shuffle, cuts the order into batches and shuffles the
    batches; the cut depends only on the lengths, so every epoch has the same number of batches."""

    def __init__(self, lengths: torch.Tensor, budget: int, seed: int):
        super().__init__(len(lengths), 1, seed)
        self.lengths, self.budget = lengths, int(budget)
        self._n_batches = len(self._cut(torch.sort(lengths, descending=True).values))

    def _cut(self, sorted_lengths: torch.Tensor) -> list[tuple[int, int]]:
        """(start, end) of each batch over lengths sorted longest first."""
        spans, i, n = [], 0, len(sorted_lengths)
        while i < n:
            rows = max(1, self.budget // max(int(sorted_lengths[i]), 1))
            spans.append((i, min(i + rows, n)))
            i += rows
        return spans

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
        tie = torch.randperm(self.n, generator=g)                                     # (U,) seeded tie-break
        order = torch.argsort(self.lengths * self.n + tie, descending=True)           # longest first
        spans = self._cut(self.lengths[order])
        batches = [order[a:b].tolist() for a, b in spans]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __len__(self) -> int:
        return -(-self._n_batches // _rank_world()[1])


def sequence_loader(seq_indptr: torch.Tensor, batch_size: int, seed: int, max_len: int | None = None,
                    batch_events: int = 0) -> DataLoader:
    """Shuffled batches of the users with at least two training items (a next item to
    predict), (B,): `batch_size` users of similar length together (_LengthBatches), or, with
    batch_events > 0, as many users as fit that many padded positions (_BudgetBatches);
    resumable and sharded under DDP as train_loader's."""
    if batch_size < 1:
        raise ValueError(f"model.optim.batch_size={batch_size} must be >= 1")
    if isinstance(batch_events, bool) or not isinstance(batch_events, int) or batch_events < 0:
        raise ValueError(f"model.optim.batch_events={batch_events!r} must be an integer >= 0 (0: batch_size users)")
    lengths = torch.diff(seq_indptr)
    users = torch.nonzero(lengths >= 2).flatten()
    n = lengths[users] if max_len is None else lengths[users].clamp(max=max_len + 1)
    sampler = _BudgetBatches(n, batch_events, seed) if batch_events else _LengthBatches(n, batch_size, seed)
    return DataLoader(TensorDataset(users), sampler=sampler, batch_size=None)
