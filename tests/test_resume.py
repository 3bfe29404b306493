"""A training run killed by a real signal and resumed with ckpt_path=last ends with exactly the
metrics of an uninterrupted run (CPU): same batches (epoch-seeded shuffles), same negatives
(the generator state is in the checkpoint), same weights, optimiser and callback states."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["debug=fast", "trainer.accelerator=cpu", "trainer.max_epochs=4", "trainer.limit_train_batches=12",
        "callbacks.early_stopping.patience=10", "logger=none", "report.projector=false"]


def _train(out: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *ARGS, f"hydra.run.dir={out}", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _metrics(out: str) -> dict:
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    p = _train(full)
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]

    p = _train(cut)
    last = os.path.join(cut, "checkpoints", "last.ckpt")
    deadline = time.time() + 300
    size = -1
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(last) and os.path.getsize(last) == size and size > 0:
            break                                   # written and stable: epoch 0 is saved
        size = os.path.getsize(last) if os.path.exists(last) else -1
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signal.SIGKILL)                   # a crash: nothing gets to clean up
    p.wait()
    assert not os.path.exists(os.path.join(cut, "metrics.json"))

    p = _train(cut, "ckpt_path=last")
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    a, b = _metrics(full), _metrics(cut)
    keys = [k for k in a if k.startswith(("test/", "best/"))]
    assert len(keys) > 20
    for k in keys:
        assert b[k] == pytest.approx(a[k], abs=1e-6), k


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_checkpoint_is_refused_not_run(tmp_path):
    """Resuming from a .ckpt that holds a pickle payload fails without running it."""
    import pickle
    from tests.conftest import compose_train
    import train
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "PWNED"
    with open(out / "checkpoints" / "last.ckpt", "wb") as fh:
        pickle.dump({"state_dict": _Payload(str(marker))}, fh)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|Unsupported"):
        train.run(compose_train([*ARGS, "ckpt_path=last"], str(out)))
    assert not marker.exists()


def test_epoch_batches_depend_only_on_seed_and_epoch():
    """The shuffle of epoch e is the same whatever was iterated before (what makes resuming exact)."""
    from recsys.train.module import _EpochBatches

    def batches(s, epoch):
        s.set_epoch(epoch)
        return [list(b) for b in s]
    a, b = _EpochBatches(50, 8, seed=3), _EpochBatches(50, 8, seed=3)
    e0, e1 = batches(a, 0), batches(a, 1)
    assert e0 != e1 and sorted(sum(e0, [])) == list(range(50))
    batches(b, 5)
    next(iter(b))                                   # a partial epoch in between
    assert batches(b, 1) == e1 and batches(b, 0) == e0
    assert batches(_EpochBatches(50, 8, seed=4), 0) != e0


def test_user_batches_keep_histories_together_and_resume_exactly():
    """batching="users": every pair once an epoch, each user's pairs in one run of the order
    (so in at most two consecutive batches when it fits one), users in a fresh order each
    epoch, and epoch e's batches depend only on seed and epoch (resuming stays exact)."""
    from recsys.train.module import _EpochBatches
    users = torch.tensor([u for u in range(12) for _ in range(1 + u % 4)])         # 30 pairs
    n = len(users)

    def batches(s, epoch):
        s.set_epoch(epoch)
        return [list(b) for b in s]
    a = _EpochBatches(n, 8, seed=3, users=users)
    e0, e1 = batches(a, 0), batches(a, 1)
    order = sum(e0, [])
    assert sorted(order) == list(range(n))
    runs = [int(users[i]) for j, i in enumerate(order) if j == 0 or users[order[j - 1]] != users[i]]
    assert sorted(runs) == list(range(12))                          # one run per user
    assert e0 != e1
    b = _EpochBatches(n, 8, seed=3, users=users)
    batches(b, 4)
    assert batches(b, 1) == e1 and batches(b, 0) == e0


def test_user_runs_cut_long_histories():
    """user_run=3: a user's pairs come in runs of at most 3 placed independently (a history of
    10 pairs is at least 4 stretches of the order unless runs happen to meet), every pair once."""
    from recsys.train.module import _EpochBatches
    users = torch.tensor([0] * 10 + [1] * 7 + [2] * 2)
    s = _EpochBatches(len(users), 4, seed=0, users=users, run=3)
    for epoch in range(3):
        s.set_epoch(epoch)
        order = sum([list(b) for b in s], [])
        assert sorted(order) == list(range(len(users)))
        # cut the order into same-user stretches; each is a whole number of runs of <= 3
        stretches, runs = [], 0
        for j, i in enumerate(order):
            if j and users[order[j - 1]] == users[i]:
                stretches[-1][1] += 1
            else:
                stretches.append([int(users[i]), 1])
        for u, n in ((0, 10), (1, 7), (2, 2)):
            assert sum(k for v, k in stretches if v == u) == n
        runs = max(runs, sum(1 for v, k in stretches if v == 0))
    assert runs >= 2                                    # user 0's history was cut
    whole = _EpochBatches(len(users), 4, seed=0, users=users, run=0)
    for epoch in range(3):
        whole.set_epoch(epoch)
        order = sum([list(b) for b in whole], [])
        assert sum(1 for j, i in enumerate(order) if j == 0 or users[order[j - 1]] != users[i]) == 3
