"""Lightning around the Scorer: sampling, optimiser, logging, per-epoch full-ranking validation.
The losses of a batch are the scorer's (learned_loss.batch_loss), and so is the list of its large
tables that get row-sparse updates (Scorer.sparse_tables, model.optim.sparse=true).

Only train.py (and tests) import this module; the scorer and exports do not need Lightning.

Distributed (trainer=ddp, devices=N): the loaders shard themselves (Lightning's sampler
injection is off, `use_distributed_sampler: false`): each process takes every N-th batch of
the epoch's shuffle (padded so that all take the same number of steps) and every N-th user of
validation/test; each draws its own negatives (its own seed per epoch); metric sums and user
counts are all-reduced before the means, so every user is counted exactly once.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from recsys.eval.evaluation import MetricSums, measure, users_with_targets
from recsys.train.learned_loss import batch_loss
from recsys.train.losses import LOSSES
from recsys.models.learned import Scorer


class RankingModule(L.LightningModule):
    """What every learned model's module shares: the evaluation sets as buffers, the random
    state in checkpoints, full-ranking validation and test of `self.scorer` (any
    models/base.Model) with metrics summed over processes."""

    def __init__(self, scorer, eval_sets: dict, ks: tuple[int, ...] = (10, 20)):
        super().__init__()
        self.scorer = scorer
        self.ks = sorted(ks)
        # evaluation CSRs move with the module but stay out of checkpoints (they are data)
        for name, (indptr, indices) in eval_sets.items():
            self.register_buffer(f"{name}_indptr", indptr, persistent=False)
            self.register_buffer(f"{name}_indices", indices, persistent=False)
        self._sums: MetricSums | None = None
        self._side = None
        self._base_seed = torch.initial_seed()         # set by seed_everything before this module

    # --- resuming: the negatives come from torch's global generator; its state travels in
    # the checkpoint, so a resumed run draws the negatives the uninterrupted one would have
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recsys_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["recsys_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("recsys_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def on_train_epoch_start(self) -> None:
        # several processes: each draws its own negatives (the same seed everywhere would make
        # them identical); re-seeded per epoch, so a resumed run draws what it would have
        if self.trainer.world_size > 1:
            torch.manual_seed(self._base_seed + 7919 * self.current_epoch + self.global_rank + 1)

    def csr(self, name: str):
        return getattr(self, f"{name}_indptr"), getattr(self, f"{name}_indices")

    # --- full-ranking validation and test ---------------------------------------------------

    def _eval_start(self):
        self._sums = MetricSums()
        self._side = self.scorer.item_side()

    def _eval_step(self, users, split):
        for _, _, m in measure(self.scorer, users, self.csr(f"{split}_target"), self.csr(f"{split}_seen"),
                               self.ks, chunk_size=max(len(users), 1), side=self._side):
            self._sums.update(m)

    def _eval_end(self, prefix):
        # sums over all processes' users, then the means, identical on every process (so
        # sync_dist's averaging leaves them as they are)
        for name, v in self._sums.all_reduce(self.ks).compute(prefix).items():
            self.log(name, v, prog_bar=name.endswith("ndcg@10"), sync_dist=True)
        self._side = None

    def on_validation_epoch_start(self):
        self._eval_start()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch[0], "val")

    def on_validation_epoch_end(self):
        self._eval_end("val/")

    def on_test_epoch_start(self):
        self._eval_start()

    def test_step(self, batch, batch_idx):
        self._eval_step(batch[0], "test")

    def on_test_epoch_end(self):
        self._eval_end("test/")
        self.last_test_metrics = self._sums.compute("test/")



class RecsysModule(RankingModule):
    """The token-embedding Scorer's training: (user, item) pair batches, shared negatives, the
    scorer's own losses (learned_loss.batch_loss), Adam or lazy Adam for its large tables."""

    def __init__(self, scorer: Scorer, eval_sets: dict, loss: str = "softmax", n_neg: int = 1024,
                 lr: float = 5e-3, weight_decay: float = 1e-4, l2: float = 0.0,
                 ks: tuple[int, ...] = (10, 20), sparse: bool = False, max_history: int = 0):
        if loss not in LOSSES:
            raise ValueError(f"model.optim.loss={loss!r} is not one of {sorted(LOSSES)}")
        if n_neg < 1:
            raise ValueError(f"model.optim.n_neg={n_neg} must be >= 1")
        if max_history < 0:
            raise ValueError(f"model.optim.max_history={max_history} must be >= 0 (0: whole histories)")
        super().__init__(scorer, eval_sets, ks)
        self.save_hyperparameters(ignore=["scorer", "eval_sets"])
        self.loss_fn = LOSSES[loss]

    # --- training ---------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        users, pos = batch[0][:, 0], batch[0][:, 1]                          # (B,), (B,)
        # N negatives shared by the whole batch, drawn uniformly on the batch's device; the
        # scorer scores and masks them (learned_loss.batch_loss) and reads only the rows they need
        neg = torch.randint(self.scorer.config.n_items, (self.hparams.n_neg,), device=users.device)   # (N,)
        parts = batch_loss(self.scorer, users, pos, neg, self.loss_fn, l2=self.hparams.l2,
                           sparse=self.hparams.sparse, max_history=self.hparams.max_history)
        loss = sum(parts.values())
        for name, part in parts.items():
            self.log(f"train/loss_{name}", part, on_step=False, on_epoch=True)
        if "alpha" in parts:
            self.log("train/alpha", self.scorer.alpha, on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        """Adam; with sparse=true, SparseAdam (lazy: only the batch's rows) for the scorer's
        large tables (scorer.sparse_tables(): with a million users, a dense Adam update of the
        whole tables costs more than the step) and Adam for the rest (MixedAdam)."""
        tables = self.scorer.sparse_tables() if self.hparams.sparse else []
        if tables:
            ids = {id(p) for p in tables}
            dense = [p for p in self.parameters() if id(p) not in ids]
            return MixedAdam(dense, tables, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

class MixedAdam(torch.optim.Optimizer):
    """Adam (with weight decay) for dense-gradient parameters plus SparseAdam for the tables
    with row-sparse gradients (model.optim.sparse=true): only the rows of the batch are
    updated (lazy Adam), and weight decay, as Adam's L2 term wd * w added to the gradient, is
    applied to those rows only. One optimizer object for Lightning; its state_dict holds both."""

    def __init__(self, dense, sparse, lr: float, weight_decay: float = 0.0):
        dense = list(dense)
        # torch's Adam refuses an empty list (every parameter of the model may be a table)
        self.dense = torch.optim.Adam(dense or [torch.zeros(0, requires_grad=True)], lr=lr, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(list(sparse), lr=lr)
        self.weight_decay = float(weight_decay)
        self.defaults = dict(self.dense.defaults)
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}

    @property
    def param_groups(self):
        return self.dense.param_groups + self.sparse.param_groups

    @property
    def state(self):
        return {**self.dense.state, **self.sparse.state}

    @torch.no_grad()
    def _decay_rows(self) -> None:
        for group in self.sparse.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.coalesce()
                rows = g.indices()[0]                                   # (r,) distinct rows
                p.grad = torch.sparse_coo_tensor(g.indices(), g.values() + self.weight_decay * p[rows],
                                                 p.shape, is_coalesced=True, check_invariants=False)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.weight_decay > 0:
            self._decay_rows()
        self.dense.step()
        self.sparse.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def state_dict(self):
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict) -> None:
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])


class _EpochBatches(BatchSampler):
    """BatchSampler over a seeded RandomSampler whose shuffle for epoch e is the e-th draw of
    its generator whatever happened before: Lightning calls set_epoch(e) at every epoch start,
    also after resuming from a checkpoint, so a resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int, users: torch.Tensor | None = None, run: int = 0):
        self.seed, self.n, self.users, self.epoch, self.run = seed, n, users, 0, int(run)
        super().__init__(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)),
                         batch_size, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        g = self.sampler.generator.manual_seed(self.seed)
        for _ in range(int(epoch)):              # skip the earlier epochs' permutations
            torch.randperm(self.n, generator=g)

    def _by_user(self) -> list[int]:
        """This epoch's order with each user's pairs together: each user's pairs shuffled and cut
        into runs of at most `run` (0: the whole history), the runs in a seeded random order
        (so a batch holds the runs of a few users)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)                                   # pairs, shuffled
        u = self.users[perm]
        order = perm[torch.argsort(u, stable=True)]                                  # grouped by user
        if self.run > 0:
            u = self.users[order]
            start = torch.searchsorted(u, u)                                         # first pair of its user
            key = torch.arange(len(u)) - start                                       # position in the user
            run = torch.cumsum(key % self.run == 0, 0) - 1                           # run id, 0..runs-1
        else:
            run = self.users[order]                                                  # a run per user
        rank_of = torch.randperm(int(run.max()) + 1, generator=g)                    # runs, shuffled
        return order[torch.argsort(rank_of[run], stable=True)].tolist()

    def _batches(self) -> list[list[int]]:
        """This epoch's batches, before sharding."""
        order = list(self.sampler) if self.users is None else self._by_user()
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self):
        rank, world = _rank_world()
        if world == 1 and self.users is None and type(self)._batches is _EpochBatches._batches:
            yield from super().__iter__()
            return
        # every process draws the same shuffle and takes every world-th batch of it; the last
        # batches are padded from the start of the shuffle so all take len(self) steps
        batches = self._batches()
        n = len(self)
        batches = (batches * (1 + (n * world) // max(len(batches), 1)))[:n * world]
        yield from batches[rank::world]

    def __len__(self) -> int:
        n = -(-self.n // self.batch_size)
        return -(-n // _rank_world()[1])


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _UserShards(torch.utils.data.Sampler):
    """Chunks of this process's share of the users (every world-th one), as index lists."""

    def __init__(self, n: int, chunk_size: int):
        self.n, self.chunk = n, chunk_size

    def _mine(self) -> list[int]:
        rank, world = _rank_world()
        return list(range(rank, self.n, world))

    def __iter__(self):
        mine = self._mine()
        for i in range(0, len(mine), self.chunk):
            yield mine[i:i + self.chunk]

    def __len__(self) -> int:
        return -(-len(self._mine()) // self.chunk)


def train_loader(pairs, batch_size: int, seed: int, batching: str = "interactions", user_run: int = 0) -> DataLoader:
    """Shuffled batches of (user, item) pairs, (B, 2). The sampler yields a list of indices per
    batch and the dataset slices them at once (no per-interaction collate).
    batching: "interactions" draws pairs uniformly (a heavy user is in nearly every batch);
    "users" keeps each user's pairs together, so a batch is a few users' histories and the
    step pools and scores each of them once (learned_loss.batch_loss); user_run > 0 cuts a history
    into runs of at most that many pairs, each run placed on its own (more updates of a user's
    row an epoch, less sharing)."""
    if batching not in ("interactions", "users"):
        raise ValueError(f"model.optim.batching={batching!r} must be 'interactions' or 'users'")
    t = torch.as_tensor(pairs, dtype=torch.long)
    users = t[:, 0].contiguous() if batching == "users" else None
    if user_run < 0:
        raise ValueError(f"model.optim.user_run={user_run} must be >= 0 (0: whole histories)")
    return DataLoader(TensorDataset(t), sampler=_EpochBatches(len(t), batch_size, seed, users, user_run),
                      batch_size=None)


def user_loader(indptr: torch.Tensor, chunk_size: int) -> DataLoader:
    """Chunks of the users that have at least one target item, (b,)."""
    users = users_with_targets(indptr)
    return DataLoader(TensorDataset(users), batch_sampler=_UserShards(len(users), chunk_size))
