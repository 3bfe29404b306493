"""What TensorBoard shows of a training run, laid out to be read at a glance.

    Time Series  test/{ndcg,recall}@K come first (TensorBoard sorts tags and opens the first
                 two groups on load); then test/slices/<slice>/... and test/variety/... (beyond
                 accuracy), each with a one-line description; train/* and val/* curves against
                 epochs (x = epoch, 1-based); val/best/* (metrics.json's best/val/*)
    Text         `summary`: the test metrics as markdown tables (accuracy, slices, beyond
                 accuracy) and the run's single numbers (fit seconds, refit, search)
    HParams      one declared key set for every run (hparam_keys: the model's own parameters,
                 "" where a key does not apply), val/best/* and test/* as the metrics
    Projector    item tables with title, genres, popularity and cold/warm columns

TensorBoard tags come from the stable metric names of metrics.json through `tag()`:

    >>> tag("test/ndcg@10"), tag("test/cold_items/recall@20"), tag("test/gini@10"), tag("test/mrr@10")
    ('test/ndcg@10', 'test/slices/cold_items/recall@20', 'test/variety/gini@10', None)

(None: a table cell only.) Two names differ from the obvious ones so that test NDCG@10 is on
the first screen: the beyond-accuracy group is `test/variety`, not `test/beyond` (sorting before
`ndcg`, it would come first in the test group), and metrics.json's `best/val/ndcg@10` is
`val/best/ndcg@10` (a `best` group would sort before `test` and fill the first screen).
The descriptions mirror docs/metrics.md, "In TensorBoard" (tests/test_tensorboard.py keeps the two
in step).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger

from recsys.models.learned import ScorerConfig
from recsys.models.memory import MemoryConfig
from recsys.train.module import RecsysModule


HEADLINE = ("ndcg", "recall")                       # drawn as scalars; the rest is in the tables
ACCURACY = ("ndcg", "recall", "precision", "hit", "mrr", "map")
BEYOND = ("coverage", "gini", "novelty", "ild", "tail")

DESCRIPTIONS = {
    "ndcg": "hits discounted by 1/log2(rank+1), over the best reachable; per user, averaged (the headline metric)",
    "recall": "share of the user's held-out items found in the top K; per user, averaged",
    "precision": "hits in the top K divided by K; per user, averaged",
    "hit": "share of users with at least one held-out item in the top K",
    "mrr": "1 / rank of the first hit in the top K (0 without one); per user, averaged",
    "map": "mean of the precision at each hit, over min(held-out items, K); per user, averaged",
    "coverage": "share of the catalog shown to anyone in a top K",
    "gini": "how unequally items are shown: 0 = all equally often, near 1 = everyone gets the same few",
    "novelty": "mean -log2(popularity) of the shown items, in bits: higher = less popular items",
    "ild": "intra-list diversity: mean 1 - cosine of the text vectors of a list's item pairs",
    "tail": "share of list slots given to long-tail items (outside the short head holding 80% of training interactions)",
    "users": "users evaluated: those with at least one held-out item",
}
SLICES = {
    "cold_items": "held-out items with no training interaction: only content reaches them, so a model "
                  "without content (or cold_k) scores 0 here",
    "warm_items": "held-out items with at least one training interaction",
    "hist": "users with this many training interactions",
    "new_users": "users kept out of training, scored from half of their history (experiment=newusers)",
}
BEST = "validation value of the epoch restored for testing (memory models: their one validation)"


def tag(name: str) -> str | None:
    """The TensorBoard scalar tag of a metric name of metrics.json; None: shown in the summary
    table only (single numbers that a chart says worse)."""
    parts = name.split("/")
    if "@" not in parts[-1]:
        return None
    metric = parts[-1].split("@")[0]
    if parts[:2] == ["best", "val"] and len(parts) == 3 and metric in HEADLINE:
        return f"val/best/{parts[2]}"
    if parts[0] != "test":
        return None
    if len(parts) == 2:
        return name if metric in HEADLINE else f"test/variety/{parts[1]}" if metric in BEYOND else None
    if len(parts) == 3 and metric in HEADLINE:
        return f"test/slices/{parts[1]}/{parts[2]}"
    return None


def describe(name: str) -> str:
    """One line for a metric name: what the metric is and, for a slice, which users or items."""
    parts = name.split("/")
    metric, _, k = parts[-1].partition("@")
    text = f"{metric}@{k}: {DESCRIPTIONS.get(metric, '')}" if k else DESCRIPTIONS.get(metric, metric)
    if "best" in parts[:2]:
        return f"{text}. {BEST}"
    if len(parts) == 3:
        return f"{text}. Slice {parts[1]}: {_slice(parts[1])}"
    return text


def _slice(name: str) -> str:
    if name.startswith("hist_"):
        return f"{SLICES['hist']} ({name[5:]})"
    return SLICES.get(name, name)


# --- run names and HParams ---------------------------------------------------------------------

def model_name(model: dict) -> str:
    """hybrid, ease, blend(ease+content_knn), ... from a spec's to_dict()."""
    kind = model.get("kind", "learned")
    return NAMES[kind](model) if kind in NAMES else str(kind)


NAMES = {"learned": lambda m: str(m.get("variant", "learned")),          # model_name by kind
         "blend": lambda m: f"blend({model_name(m['first'])}+{model_name(m['second'])})"}


def hparam_keys() -> list[str]:
    """The HParams columns of every run, whatever its model: `model` (model_name), `seed`, and
    every parameter of the learned model (ScorerConfig, its optimisation), of the memory models
    (MemoryConfig) and of a blend (alpha, norm, its two parts as text), as `model.<name>`."""
    sizes = {"n_users", "n_items", "n_tokens", "kind"}
    own = set(ScorerConfig.__dataclass_fields__) | set(MemoryConfig.__dataclass_fields__) | {"norm", "first", "second"}
    optim = set(inspect.signature(RecsysModule.__init__).parameters) - {"self", "scorer", "eval_sets", "ks"}
    return ["model", "seed"] + sorted(f"model.{k}" for k in own - sizes) \
        + sorted(f"model.optim.{k}" for k in optim | {"batch_size"})


# shown by default in the HParams table (it shows five columns at first): what tells the model
# families apart. Marked `differs` in the declared config, which the dashboard puts first.
SHOWN = ("model", "model.alpha", "model.dim", "model.k", "model.lam")


def hparam_values(model: dict, seed: int, keys: list[str] | None = None) -> dict:
    """{key: value} for every key of hparam_keys(): the spec's values, "" where a key does not
    apply; a blend's parts as one line each (`ease lam=200.0 cold_k=0`)."""
    flat = {"model": model_name(model), "seed": int(seed)}
    for k, v in model.items():
        if k == "kind":
            continue
        if k in ("first", "second") and isinstance(v, dict):
            flat[f"model.{k}"] = model_name(v) + "".join(f" {a}={b}" for a, b in v.items() if a not in ("kind", "optim"))
        elif isinstance(v, dict):
            flat.update({f"model.{k}.{a}": b for a, b in v.items()})
        else:
            flat[f"model.{k}"] = v
    out = {}
    for k in keys or hparam_keys():
        v = flat.get(k)
        out[k] = "" if v is None else v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def hparam_metrics(ks, trial_metric: str | None = None) -> list[str]:
    """The HParams metric columns (TensorBoard tags): val/best/* and test/* (ndcg, recall at
    every K), and a search's trial value when the run searched."""
    names = [f"{p}/{m}@{k}" for p in ("val/best", "test") for m in HEADLINE for k in sorted(ks)]
    return names + ([f"trial/{trial_metric}"] if trial_metric else [])


def _hparams_summaries(values: dict, metrics: list[str] | None, start: float, status: str = "complete"):
    """This session's values (grouped with sessions of equal values) and, with `metrics`, the
    declared experiment (the columns), as Summary protos."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    def summary(tag_: str, data) -> Summary:
        s = Summary()
        s.value.add(tag=tag_, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
        return s
    group = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    session = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=start)
    for k, v in values.items():
        if isinstance(v, bool):
            session.hparams[k].bool_value = v
        elif isinstance(v, (int, float)):
            session.hparams[k].number_value = v
        else:
            session.hparams[k].string_value = v
    code = api_pb2.STATUS_SUCCESS if status == "complete" else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
    out = [summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=session)),
           summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))]
    if metrics is not None:
        experiment = api_pb2.Experiment(
            hparam_infos=[api_pb2.HParamInfo(name=k, differs=k in SHOWN) for k in values],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m), description=describe(m)) for m in metrics],
            time_created_secs=start)
        out.insert(0, summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    return out


def scalar_summary(tag_: str, value: float, description: str = ""):
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.scalar import metadata
    from tensorboard.util import tensor_util
    s = Summary()
    s.value.add(tag=tag_, metadata=metadata.create_summary_metadata(display_name=tag_, description=description),
                tensor=tensor_util.make_tensor_proto(np.float32(value)))
    return s


def text_summary(tag_: str, markdown: str, description: str = ""):
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.text import metadata
    from tensorboard.util import tensor_util
    s = Summary()
    s.value.add(tag=tag_, metadata=metadata.create_summary_metadata(display_name=tag_, description=description),
                tensor=tensor_util.make_tensor_proto(np.array(markdown.encode("utf-8"), dtype=object)))
    return s


# --- the summary table --------------------------------------------------------------------------

def _f(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if math.isnan(v):
        return "–"                                           # no users in that slice
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"


def summary_markdown(metrics: dict, name: str = "", best_epoch: int | None = None, epochs: int | None = None) -> str:
    """The run's test metrics as markdown: accuracy (metric x K), slices, beyond accuracy, the
    other single numbers of the run (fit seconds, search, refit, ...), then one line per metric
    and slice shown (the tables stay narrow enough for TensorBoard's text card)."""
    ks = sorted({int(k.rsplit("@", 1)[1]) for k in metrics if k.startswith("test/") and "@" in k})
    head = "| " + " | ".join(f"@{k}" for k in ks) + " |"
    rule = "|---" * (len(ks) + 1) + "|"
    users = metrics.get("test/users")
    lines = [f"### {name or 'run'}: test NDCG@{ks[0] if ks else 10} "
             f"{_f(metrics.get(f'test/ndcg@{ks[0]}', float('nan'))) if ks else ''}",
             "", f"Full ranking over the whole catalog, {_f(users) if users is not None else '?'} test users "
             f"(docs/metrics.md).", ""]
    done, said = set(), []

    def table(title: str, names) -> None:
        lines.extend([f"| {title} {head}", rule])
        for m in names:
            lines.append(f"| {m} | " + " | ".join(_f(metrics.get(f"test/{m}@{k}", float("nan"))) for k in ks) + " |")
            done.update(f"test/{m}@{k}" for k in ks)
            said.append(f"- **{m}**: {DESCRIPTIONS[m]}")
    rows = [m for m in ACCURACY if any(f"test/{m}@{k}" in metrics for k in ks)]
    if rows:
        table("test", rows)
    best = {k: v for k, v in metrics.items() if k.startswith("best/val/")}
    if best:
        when = f" (epoch {best_epoch} of {epochs})" if best_epoch and epochs else ""
        shown = [k for k in sorted(best) if k.split("/")[-1].split("@")[0] in HEADLINE]
        lines += ["", f"Best validation{when}: " + ", ".join(f"{k[len('best/val/'):]} {_f(best[k])}"
                                                              for k in shown) + "."]
        done.update(best)
    slices = sorted({k.split("/")[1] for k in metrics if k.startswith("test/") and k.count("/") == 2})
    if slices:
        cols = [f"{m}@{k}" for m in HEADLINE for k in ks]
        lines += ["", "#### Slices", "", "| slice | users | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for sl in slices:
            n = int(metrics.get(f"test/{sl}/users", 0))
            lines.append(f"| {sl} | {n:,} | " + " | ".join(_f(metrics.get(f"test/{sl}/{c}", float("nan")))
                                                            for c in cols) + " |")
            done.update(k for k in metrics if k.startswith(f"test/{sl}/"))
            said.append(f"- **{sl}**: {_slice(sl)}")
        lines += ["", "(– : no user in that slice; every accuracy metric of every slice is in metrics.json)"]
    beyond = [m for m in BEYOND if any(f"test/{m}@{k}" in metrics for k in ks)]
    if beyond:
        lines += ["", "#### Beyond accuracy", ""]
        table("metric", beyond)
    rest = {k: v for k, v in metrics.items() if k not in done and k != "test/users" and isinstance(v, (int, float))
            and not (k.startswith("test/") and k.count("/") == 2)}
    if rest:
        lines += ["", "#### Run", "", "| | |", "|---|---|"] + [f"| {k} | {_f(v)} |" for k, v in sorted(rest.items())]
    if said:
        lines += ["", "#### What the numbers say", ""] + said
    return "\n".join(lines) + "\n"


# --- the Lightning logger -----------------------------------------------------------------------

class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, drawing only what changes during training:

    - train/* and val/* curves; the epoch-level ones (every key Lightning logs with an epoch but
      `*_step`) and validation against the epoch, 1-based, instead of the batch step; no
      `epoch` staircase; a second fit in the same run (the refit on train + validation) as
      train/refit/*, so its epochs do not overwrite the first fit's;
    - a validation without an epoch (a memory model's one fit) and test/*, fit/* numbers are not
      charts: they reach the summary table (write_summary);
    - no hyperparameters from Lightning (the module's): the run's curated set is written once,
      by write_summary, with the declared HParams config.

    `val_history` holds every validation logged ({"epoch": e or None, "val/...": v});
    `best_val(metric)` the one with the highest value of `metric` (the restored epoch)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._default_hp_metric = False                    # no hp_metric placeholder
        self.val_history: list[dict] = []
        self._fits, self._last_epoch = 0, None

    def log_hyperparams(self, params, metrics=None) -> None:
        super().log_hyperparams(params, metrics=None)      # kept for hparams.yaml, not written to TensorBoard

    def log_metrics(self, metrics, step=None) -> None:
        metrics = {k: v for k, v in metrics.items() if k == "epoch" or k.startswith(("train/", "val/"))}
        epoch = metrics.pop("epoch", None)
        epoch = int(epoch) + 1 if epoch is not None else None
        if not metrics:
            return
        if epoch is not None:
            if self._last_epoch is not None and epoch < self._last_epoch:
                self._fits += 1                            # epochs start again: a new fit
            self._last_epoch = epoch
        val = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        if val:
            self.val_history.append({"epoch": epoch, **val})
            if epoch is None:                               # one validation, no curve: the summary shows it
                metrics = {k: v for k, v in metrics.items() if k not in val}
        curves: dict = {}
        for k, v in metrics.items():
            if self._fits and k.startswith("train/"):
                k = "train/refit/" + k[len("train/"):]
            at = step if epoch is None or k.endswith("_step") else epoch
            curves.setdefault(at, {})[k] = v
        for at, m in curves.items():
            super().log_metrics(m, at)

    def best_val(self, metric: str) -> dict:
        """The logged validation with the highest `metric` (the first of equals, as
        ModelCheckpoint keeps it); {} if none."""
        seen = [v for v in self.val_history if metric in v and not math.isnan(v[metric])]
        return max(seen, key=lambda v: v[metric]) if seen else {}


def write_summary(log_dir: str, metrics: dict, hparams: dict, metric_names: list[str], name: str = "",
                  best_epoch: int | None = None, epochs: int | None = None) -> None:
    """The end of a run in TensorBoard, in its own event file under log_dir: the summary table
    (text), the scalars that tag() draws (step 0, with descriptions), the HParams config and
    this run's session (hparams: hparam_values(); metric_names: hparam_metrics())."""
    from torch.utils.tensorboard.writer import FileWriter
    w = FileWriter(log_dir, filename_suffix=".summary")
    w.add_summary(text_summary("summary", summary_markdown(metrics, name, best_epoch, epochs),
                               "the run's test metrics (docs/metrics.md)"), 0)
    for k, v in metrics.items():
        t = tag(k)
        if t is not None and isinstance(v, (int, float)) and math.isfinite(v):
            w.add_summary(scalar_summary(t, float(v), describe(k)), 0)
    for s in _hparams_summaries(hparams, metric_names, start=time.time()):
        w.add_summary(s, 0)
    w.close()


def write_session(log_dir: str, hparams: dict, metric_values: dict, status: str = "complete") -> None:
    """One HParams session without a summary table or a declared config (a search trial, whose
    run declares the columns): its values, its metrics as scalars, its status (complete: success;
    pruned or failed: failure, the dashboard has no other end state)."""
    from torch.utils.tensorboard.writer import FileWriter
    os.makedirs(log_dir, exist_ok=True)
    w = FileWriter(log_dir, filename_suffix=".summary")
    from tensorboard.compat.proto.summary_pb2 import Summary
    for k, v in metric_values.items():
        if v is not None and math.isfinite(v):           # plain scalars (no description to carry)
            w.add_summary(Summary(value=[Summary.Value(tag=k, simple_value=float(v))]), 0)
    for s in _hparams_summaries(hparams, None, start=time.time(), status=status):
        w.add_summary(s, 0)
    w.close()
