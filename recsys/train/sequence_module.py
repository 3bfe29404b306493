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
from recsys.train.module import RankingModule, _EpochBatches

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
        pos = (h * E[y_l]).sum(1) - log_nq[y]                                         # (N,)
        negs = h @ E[neg_l].t() - log_nq[neg]                                         # (N, S)
        negs = negs.masked_fill(neg[None, :] == y[:, None], float("-inf"))
        logits = torch.cat([pos[:, None], negs], 1)                                   # (N, 1 + S)
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=y.device))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=(0.9, 0.98),
                                weight_decay=self.hparams.weight_decay)


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


def sequence_loader(seq_indptr: torch.Tensor, batch_size: int, seed: int, max_len: int | None = None) -> DataLoader:
    """Shuffled batches of the users with at least two training items (a next item to
    predict), (B,), users of similar length together (_LengthBatches); resumable and sharded
    under DDP as train_loader's."""
    if batch_size < 1:
        raise ValueError(f"model.optim.batch_size={batch_size} must be >= 1")
    lengths = torch.diff(seq_indptr)
    users = torch.nonzero(lengths >= 2).flatten()
    n = lengths[users] if max_len is None else lengths[users].clamp(max=max_len + 1)
    return DataLoader(TensorDataset(users), sampler=_LengthBatches(n, batch_size, seed), batch_size=None)
