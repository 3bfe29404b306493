"""A training run's folder: its lock, what reproduces it, the final report and what it writes.

    run_dir/
      .lock              held while a run writes the folder (pid inside)
      run_info.json      resolved config, versions, data checksums, seeds
      metrics.json       validation best, test metrics with slices and beyond-accuracy figures
      per_user.csv       per-user test metrics (external ids) for paired comparisons
      split/             the train / valid / test parts as CSV (external ids)
      export/            the model (serve/export.py), loadable with Recommender.from_pretrained

Plain arguments only: train.py (Hydra) calls these.
"""
from __future__ import annotations

import json
import logging
import os
import platform

import torch

from recsys.data.files import sha256_file, write_json_atomic
from recsys.eval.evaluation import bucket_labels, evaluate
from recsys.eval.rerank import from_config
from recsys.serve.export import save_export
from recsys.train import tensorboard as tb
from recsys.train.build import new_user_sets, report_context
from recsys.train.projector import item_columns, write_projector
from recsys.version import __version__

log = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """A run folder that this run must not write into; the message says why and what to do."""


STATE_FILE = "run_state.json"
_ARTIFACTS = ("run_info.json", "metrics.json", "export", "checkpoints", "per_user.csv", "split")


def folder_state(out: str) -> str:
    """new | running | finished | failed: running while a live process holds the lock; then
    what run_state.json says (a "running" one whose process died: failed); folders of older
    runs without it: finished with metrics.json, failed with anything else of a run."""
    pid = _read_pid(os.path.join(out, ".lock"))
    if pid is not None and pid != os.getpid() and _alive(pid):
        return "running"
    try:
        with open(os.path.join(out, STATE_FILE)) as f:
            state = json.load(f).get("state")
        if state in ("finished", "failed"):
            return state
        if state == "running":
            return "failed"
    except (OSError, ValueError, AttributeError):
        pass
    if os.path.exists(os.path.join(out, "metrics.json")):
        return "finished"
    return "failed" if any(os.path.exists(os.path.join(out, n)) for n in _ARTIFACTS) else "new"


class RunLock:
    """Exclusive use of a run folder, and its state (new, running, finished, failed):

    new       the run starts;
    running   another live process writes it: refused at once;
    finished  refused (choose another folder); resuming it (ckpt_path) only with the model it
              trained, e.g. for more epochs;
    failed    may be rerun (its checkpoints/ kept aside as checkpoints.failed-N) or resumed;
    and a resume (ckpt_path) with another model than the folder's run_info.json records is
    refused, naming the keys that differ. A refused run writes nothing into the folder (train.py
    writes .hydra/ and train.log only once the lock is taken: `accept`)."""

    def __init__(self, out: str, resume: bool, model: dict | None = None):
        self.out, self.path, self.handler = out, os.path.join(out, ".lock"), None
        os.makedirs(out, exist_ok=True)
        state = folder_state(out)
        if state == "running":
            raise RunFolderError(f"run folder {out} is being written by another run (pid {_read_pid(self.path)}); "
                                 f"choose another hydra.run.dir")
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and _alive(pid):
                    raise RunFolderError(f"run folder {out} is being written by another run (pid {pid}); "
                                         f"choose another hydra.run.dir") from None
                os.remove(self.path)                     # left by a run that died: take it over
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        try:
            self._check(state, resume, model)
        except RunFolderError:
            self.release()
            raise
        self.state, self.resume = state, resume

    def _check(self, state: str, resume: bool, model: dict | None) -> None:
        out = self.out
        if state == "finished" and not resume:
            raise RunFolderError(f"run folder {out} already holds a finished run; choose another hydra.run.dir "
                                 f"(ckpt_path=last resumes it with the same model only)")
        if resume and model is not None:
            before = _recorded_model(out)
            diff = [] if before is None else _diff(_trained(before), _trained(model))
            if diff:
                raise RunFolderError(f"ckpt_path: run folder {out} trained another model ({', '.join(diff[:4])}); "
                                     f"resume with the model it trained, or choose another hydra.run.dir")

    def accept(self) -> None:
        """The folder is this run's: a failed run's checkpoints are kept aside (a rerun starts
        afresh), the state says running, and the log also goes to <folder>/train.log (appended
        to when a run is resumed) until release()."""
        if self.state == "failed" and not self.resume:
            ck = os.path.join(self.out, "checkpoints")
            if os.path.isdir(ck) and os.listdir(ck):
                n = 1
                while os.path.exists(f"{ck}.failed-{n}"):
                    n += 1
                os.replace(ck, f"{ck}.failed-{n}")
                log.info("run folder %s: the failed run's checkpoints kept in %s", self.out, f"{ck}.failed-{n}")
        self.mark("running")
        self.handler = logging.FileHandler(os.path.join(self.out, "train.log"), mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(self.handler)

    def fail(self, e: BaseException) -> None:
        """An accepted run that raised: the folder holds a failed run (to rerun or resume)."""
        if self.handler is not None:
            self.mark("failed", error=" ".join(f"{type(e).__name__}: {e}".split())[:500])

    def mark(self, state: str, **extra) -> None:
        write_json_atomic(os.path.join(self.out, STATE_FILE), {"state": state, "pid": os.getpid(), **extra})

    def release(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.handler = None
        if os.path.exists(self.path) and _read_pid(self.path) == os.getpid():
            os.remove(self.path)


def _recorded_model(out: str) -> dict | None:
    try:
        with open(os.path.join(out, "run_info.json")) as f:
            return json.load(f)["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trained(model: dict) -> dict:
    """A model config without what does not change the trained model (Hydra's keys, the
    search space)."""
    return {k: v for k, v in model.items() if not str(k).startswith("_") and k != "search_space"}


def _diff(a, b, prefix: str = "model") -> list[str]:
    """'model.dim: 64 -> 32'-style lines of where two config dicts differ (kind first)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=lambda k: (k != "kind", str(k))):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}")
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or "x")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def checkpoint_path(ckpt_path: str | None, out: str) -> str | None:
    """The checkpoint to resume from: None, "last" (<run dir>/checkpoints/last.ckpt) or a path;
    one that does not exist is a clear error before anything else runs."""
    if not ckpt_path:
        return None
    path = os.path.join(out, "checkpoints", "last.ckpt") if ckpt_path == "last" else ckpt_path
    if not os.path.isfile(path):
        raise RunFolderError(f"ckpt_path={ckpt_path}: no checkpoint file at {path}"
                             + (" (this run folder has no last checkpoint yet; rerun without ckpt_path to start "
                                "it afresh)" if ckpt_path == "last" else ""))
    try:      # read as Lightning will (weights_only: nothing in it runs), so a bad file fails here, in one line
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # noqa: BLE001 (whatever torch.load says, the file is not resumable)
        raise RunFolderError(f"ckpt_path={ckpt_path}: refused, {path} is not a plain-tensor checkpoint "
                             f"(torch.load weights_only: {' '.join(str(e).split())[:160]})") from None
    return path


def run_info(config: dict, seed: int, data_files: list[str]) -> dict:
    """What is needed to reproduce the run: resolved config, versions, data checksums, seeds."""
    import lightning as L

    split = config.get("data", {}).get("split")
    return {"recsys": __version__, "torch": torch.__version__, "lightning": L.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "seed": int(seed), "split": split,
            "data_sha256": {os.path.abspath(f): sha256_file(f) for f in data_files if os.path.isfile(f)},
            "config": config}


def data_files(data: dict) -> list[str]:
    """The files a data config reads (its folder's CSV/Parquet files, and the named files)."""
    files = []
    if data.get("path") and os.path.isdir(data["path"]):
        files += sorted(os.path.join(data["path"], f) for f in os.listdir(data["path"])
                        if f.endswith((".csv", ".parquet")))
    return files + [data[k] for k in ("interactions", "train", "valid", "test", "items") if data.get(k)]


def final_report(model, prep, sets, ks, eval_chunk: int, device, history_buckets,
                 head_share: float, diversity: dict | None = None) -> tuple[dict, dict]:
    """Test metrics with slices (history length, cold/warm items) and beyond-accuracy metrics,
    from one more full-ranking pass of the final model, plus the new-user protocol when the
    split has one (log_run shows them). diversity: the `diversity:` config block; when its
    method is set, every test metric is of the re-ranked lists (eval/rerank.py)."""
    model = model.to(device).eval()
    on = lambda csr: tuple(t.to(device) for t in csr)
    ctx = report_context(prep, history_buckets, head_share)
    rerank = lambda history: dict(zip(("rerank", "pool"), from_config(diversity, k=max(ks), model=model,
                                                                      tokens=prep.tokens, history=history)))
    report, per_user = evaluate(model, on(sets["test_target"]), on(sets["test_seen"]), list(ks), eval_chunk,
                                "test/", context=ctx, **rerank(on(sets["test_seen"])))
    new = new_user_sets(prep)
    if new is not None:   # new-user protocol: scored from their given history, no retraining
        try:
            given = on(new["given"])
            more, _ = evaluate(model, on(new["target"]), given, list(ks), eval_chunk, "test/new_users/",
                               histories=given, **rerank(given))
            report.update(more)
        except (ValueError, NotImplementedError) as e:     # a model that cannot score histories
            log.warning("new users not evaluated: %s", e)
    model.cpu()
    return report, per_user


def best_validation(loggers, metric: str) -> tuple[dict, int | None, int | None]:
    """The validation metrics of the best logged validation (by `metric`, the epoch restored
    for testing) as best/val/*, its epoch and the number of validations, from the first
    TensorBoard logger that saw one ({} , None, None otherwise)."""
    for lg in loggers:
        if hasattr(lg, "best_val"):
            best = lg.best_val(metric)
            if best:
                epochs = [v["epoch"] for v in lg.val_history if v.get("epoch") is not None]
                return ({f"best/{k}": v for k, v in best.items() if k.startswith("val/")}, best.get("epoch"),
                        max(epochs) if epochs else None)
    return {}, None, None


def log_run(loggers, model, prep, metrics: dict, model_config: dict, seed: int, ks, projector: bool = False,
            searched_metric: str | None = None, best_epoch: int | None = None, epochs: int | None = None,
            logged=()) -> None:
    """The end of a run in every logger: a TensorBoard logger gets the summary table, the
    grouped test scalars, the run's HParams session (recsys/train/tensorboard.py) and, with
    `projector`, the item tables (recsys/train/projector.py); another logger gets the metrics
    not in `logged` (those Lightning's test loop gave it). Then each is finalised."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            values = tb.hparam_values(model_config, seed)
            tb.write_summary(lg.log_dir, metrics, values, tb.hparam_metrics(ks, searched_metric),
                             tb.model_name(model_config), best_epoch, epochs)
            if projector:
                _projector(lg.log_dir, model, prep)
        else:
            lg.log_metrics({k: v for k, v in metrics.items() if k not in logged and isinstance(v, (int, float))},
                           step=0)
        lg.finalize("success")


def _projector(log_dir: str, model, prep) -> None:
    """The learned model's item tables in TensorBoard's Projector (a memory model has none)."""
    tables = model.projector_tables()
    if tables:
        write_projector(log_dir, tables, item_columns(prep))


def write_per_user(path: str, per_user: dict, prep, buckets) -> None:
    """Per-user test metrics (external user ids) for paired run comparisons (evaluate.py compare=)."""
    import pandas as pd

    df = pd.DataFrame({"user": [prep.users.ids[int(u)] for u in per_user["user"]]})
    if "bucket" in per_user:
        labels = bucket_labels(sorted(buckets))
        df["history"] = [labels[int(b)] for b in per_user["bucket"]]
    for name, v in per_user.items():
        if "@" in name:
            df[name] = v.double().numpy()
    tmp = path + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def write_run(out: str, model, prep, sets, metrics: dict, per_user: dict, buckets, choice: dict | None = None) -> None:
    """metrics.json, per_user.csv, split/ and export/ of a finished run; `choice` (the model's
    configuration, its search and refit, train/search.select_and_fit) goes into the export."""
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    write_per_user(os.path.join(out, "per_user.csv"), per_user, prep, buckets)
    os.makedirs(os.path.join(out, "split"), exist_ok=True)
    for part in ("train", "valid", "test"):
        prep.split_frame(part).to_csv(os.path.join(out, "split", f"{part}.csv"), index=False)
    save_export(os.path.join(out, "export"), model, prep.users, prep.items, prep.tokens,
                prep.tokenizer, sets["test_seen"], torch.from_numpy(prep.bags.idf), prep.item_titles,
                meta={"metrics": {k: v for k, v in metrics.items() if k != "data"},
                      "text_fields": prep.text_fields, "events_through": prep.events_through, **(choice or {})},
                item_attributes=prep.item_attributes)


def log_trials(loggers, result, seed: int = 0) -> None:
    """Each search trial as one HParams session of the TensorBoard logger(s), under
    <log dir>/trials/<number>: the run's curated keys (tensorboard.hparam_values of the trial's
    model config), its validation value `trial/<metric>`, `trial/seconds` and its state as the
    session status, so the HParams tab compares trials with each other and with runs (the run
    declares the columns)."""
    from recsys.train.search import with_params
    base = result.spec.to_dict() if result.spec is not None else {"kind": "trial"}
    keys = tb.hparam_keys()
    for lg in loggers:
        log_dir = getattr(lg, "log_dir", None)
        if not log_dir:
            continue
        for t in result.trials:
            params = {k[len("params."):]: v for k, v in t.items() if k.startswith("params.")}
            model = with_params(base, params) if result.spec is not None else {**base, **params}
            tb.write_session(os.path.join(log_dir, "trials", f"{t['number']:03d}"), tb.hparam_values(model, seed, keys),
                             {f"trial/{result.metric}": t["value"], "trial/seconds": t["seconds"]}, t["state"])
