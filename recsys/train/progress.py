"""Training progress that reads well where it is read: Lightning's bar on a terminal, one log
line per epoch in a log file (a bar there is thousands of carriage-return redraws).

    progress_callbacks("auto")   # [] on a terminal (Lightning adds its bar), [EpochLines()] otherwise

    epoch 3/30: train/loss 4.8211, val/ndcg@10 0.1812, val/recall@20 0.2601 (41.2 s)
"""
from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger("recsys.train")

MODES = ("auto", "bar", "lines")


class EpochLines(ProgressBar):
    """A Lightning progress bar that logs one line per training epoch: the epoch loss and the
    validation metrics of that epoch (the ones the module shows in the bar, plus recall)."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._t0 = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:    # after the epoch's validation
        if not (self._enabled and trainer.is_global_zero):
            return
        m = trainer.callback_metrics
        shown = [k for k in ("train/loss_epoch", "train/loss") if k in m][:1]
        shown += sorted(k for k in m if k.startswith("val/") and k.split("@")[0].endswith(("ndcg", "recall")))
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        log.info("epoch %d/%s: %s (%.1f s)", trainer.current_epoch + 1, total,
                 ", ".join(f"{k.replace('_epoch', '')} {float(m[k]):.4f}" for k in shown),
                 time.perf_counter() - self._t0)


def progress_callbacks(mode: str = "auto", enabled: bool = True, stream=None) -> list:
    """The progress callback for `mode`: bar (Lightning's, on stdout), lines (EpochLines), or
    auto (bar when `stream`, default stdout, is a terminal, else lines). [] when the trainer's
    progress bar is off (enabled=False: trainer.enable_progress_bar) or the bar is Lightning's
    own default."""
    if mode not in MODES:
        raise ValueError(f"progress={mode!r} is not one of {MODES}")
    if not enabled or mode == "bar":
        return []
    if mode == "auto" and _is_tty(stream if stream is not None else sys.stdout):
        return []
    return [EpochLines()]


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
