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
