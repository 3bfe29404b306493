"""What TensorBoard shows of a run, read back from the event files: two runs of different model
families in one log dir declare the same HParams columns and each fills its own; the first
Time Series screen holds test NDCG@10; the summary table, tag names, descriptions, epoch steps;
no NaN placeholder. Plus the quiet-log parts (progress lines, torch's sparse warnings) and the
run folder name."""
from __future__ import annotations

import functools
import io
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(logdir: str) -> dict:
    """A run's event files: scalars {tag: [(step, value)]}, descriptions {tag: text}, the
    summary text, and the HParams plugin data {experiment, session_start_info, ...}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {"scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]},
           "descriptions": {}, "hparams": {}, "text": None}
    for t in acc.Tags()["tensors"]:
        md = acc.SummaryMetadata(t)
        plugin = md.plugin_data.plugin_name
        if plugin == "scalars":
            out["scalars"][t] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(t)]
            out["descriptions"][t] = md.summary_description
        elif plugin == "text":
            out["text"] = acc.Tensors(t)[0].tensor_proto.string_val[0].decode()
        elif plugin == "hparams":
            data = plugin_data_pb2.HParamsPluginData.FromString(md.plugin_data.content)
            out["hparams"][data.WhichOneof("data")] = getattr(data, data.WhichOneof("data"))
    return out


def _session(pb) -> dict:
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in pb.hparams.items()}


def _tb_order(a: str, b: str) -> int:
    """TensorBoard's tag order in Time Series (webapp metrics `compareTagNames`): digit runs
    compare as numbers, "/" and digits sort before any other character."""
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if a[i].isdigit() and b[j].isdigit():
            si, sj = i, j
            while i < len(a) and a[i].isdigit():
                i += 1
            while j < len(b) and b[j].isdigit():
                j += 1
            x, y = int(a[si:i]), int(b[sj:j])
            if x != y:
                return -1 if x < y else 1
            continue
        first_a, first_b = a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit()
        if first_a != first_b:
            return -1 if first_a else 1
        if a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i += 1
        j += 1


def _opened_cards(tags) -> list[str]:
    """The cards of the groups Time Series opens on load: tags sorted, grouped by the part
    before the first "/", the first two groups expanded."""
    groups: dict[str, list[str]] = {}
    for t in sorted(tags, key=functools.cmp_to_key(_tb_order)):
        groups.setdefault(t.split("/", 1)[0], []).append(t)
    return [t for g in list(groups)[:2] for t in groups[g]]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The default hybrid (two short epochs) and model=ease on a tiny dataset, one log dir."""
    from tests.conftest import compose_train, write_tiny_dataset
    import train
    d = tmp_path_factory.mktemp("tb")
    files = write_tiny_dataset(str(d))
    base = ["data=csv", f"data.train={files['train']}", f"data.test={files['test']}", f"data.items={files['items']}",
            "trainer.accelerator=cpu"]
    runs = {}
    for name, over in (("hybrid", ["trainer.max_epochs=2", "model.dim=8", "model.optim.n_neg=16"]),
                       ("ease", ["model=ease"])):
        out = str(d / "logs" / name)
        runs[name] = (out, train.run(compose_train(base + over, out)))
    return runs


def test_hparams_declare_the_same_columns_and_each_run_fills_its_own(two_runs):
    from recsys.train.tensorboard import hparam_keys
    read = {n: _read(os.path.join(out, "tensorboard")) for n, (out, _) in two_runs.items()}
    configs = [r["hparams"]["experiment"] for r in read.values()]
    assert configs[0].hparam_infos == configs[1].hparam_infos and configs[0].metric_infos == configs[1].metric_infos
    columns = [h.name for h in configs[0].hparam_infos]
    assert columns == hparam_keys()
    assert not [c for c in columns if c.startswith(("callbacks.", "paths.", "logger.", "trainer.")) or "_target_" in c]
    assert {"model.dim", "model.alpha", "model.optim.lr", "model.lam", "model.k", "model.similarity"} <= set(columns)
    assert [h.name for h in configs[0].hparam_infos if h.differs] == ["model", "model.alpha", "model.dim", "model.k",
                                                                      "model.lam"]
    assert [m.name.tag for m in configs[0].metric_infos] == [
        "val/best/ndcg@10", "val/best/ndcg@20", "val/best/recall@10", "val/best/recall@20",
        "test/ndcg@10", "test/ndcg@20", "test/recall@10", "test/recall@20"]
    hybrid, ease = (_session(read[n]["hparams"]["session_start_info"]) for n in ("hybrid", "ease"))
    assert set(hybrid) == set(ease) == set(columns)
    assert (hybrid["model"], hybrid["model.dim"], hybrid["model.alpha"], hybrid["model.optim.n_neg"]) == ("hybrid", 8, 0.5, 16)
    assert hybrid["model.lam"] == hybrid["model.similarity"] == ""
    assert (ease["model"], ease["model.lam"], ease["model.dim"], ease["model.optim.lr"]) == ("ease", 200.0, "", "")
    assert hybrid["seed"] == ease["seed"] == 2026
    # every declared metric has its value in both runs: test/* as in metrics.json, val/best/* the
    # validation of the best epoch (metrics.json holds the optimised one, best/val/ndcg@10)
    for name, (_, metrics) in two_runs.items():
        for m in configs[0].metric_infos:
            assert len(read[name]["scalars"][m.name.tag]) == 1, m.name.tag
        for t in ("test/ndcg@10", "test/recall@20"):
            assert read[name]["scalars"][t] == [(0, pytest.approx(metrics[t], rel=1e-6))]
        assert read[name]["scalars"]["val/best/ndcg@10"] == [(0, pytest.approx(metrics["best/val/ndcg@10"], rel=1e-6))]
    hybrid_val = _read(os.path.join(two_runs["hybrid"][0], "tensorboard"))["scalars"]
    best_epoch = max(hybrid_val["val/ndcg@10"], key=lambda p: p[1])[0]
    assert hybrid_val["val/best/recall@20"][0][1] == dict(hybrid_val["val/recall@20"])[best_epoch]


def test_first_screen_of_time_series_and_tag_names(two_runs):
    from recsys.train.tensorboard import describe
    tags = set()
    for name, (out, metrics) in two_runs.items():
        r = _read(os.path.join(out, "tensorboard"))
        tags |= set(r["scalars"])
        for t, points in r["scalars"].items():
            assert all(math.isfinite(v) for _, v in points), t                      # no NaN placeholder
            assert re.fullmatch(r"(train/.+|val/\w+@\d+|val/best/(ndcg|recall)@\d+|test/(ndcg|recall)@\d+"
                                r"|test/slices/[\w+-]+/(ndcg|recall)@\d+|test/variety/(coverage|gini|novelty|ild|tail)@\d+)",
                                t), t
        assert r["descriptions"]["test/variety/gini@10"] == describe("test/gini@10")
        assert "Slice cold_items" in describe("test/cold_items/ndcg@10")
        assert r["scalars"]["test/slices/warm_items/ndcg@10"] == [(0, pytest.approx(metrics["test/warm_items/ndcg@10"]))]
        if name == "hybrid":                 # curves against epochs, not batch steps; no staircase
            assert [s for s, _ in r["scalars"]["val/ndcg@10"]] == [1, 2]
            assert [s for s, _ in r["scalars"]["train/loss_epoch"]] == [1, 2]
            assert "train/refit/loss_epoch" in r["scalars"]          # the refit on train + valid
            assert max(v for _, v in r["scalars"]["val/ndcg@10"]) == pytest.approx(metrics["best/val/ndcg@10"])
        else:                                # one validation: a number in the table, no chart
            assert sorted(t for t in r["scalars"] if t.startswith(("val/", "train/", "fit/"))) == [
                "val/best/ndcg@10", "val/best/ndcg@20", "val/best/recall@10", "val/best/recall@20"]
    assert "epoch" not in tags
    opened = _opened_cards(tags)                 # test first, then train (the hybrid's curves)
    assert opened[:4] == ["test/ndcg@10", "test/ndcg@20", "test/recall@10", "test/recall@20"]
    assert {t.split("/")[0] for t in opened} == {"test", "train"}


def test_summary_table(two_runs):
    out, metrics = two_runs["hybrid"]
    text = _read(os.path.join(out, "tensorboard"))["text"]
    assert text.startswith(f"### hybrid: test NDCG@10 {metrics['test/ndcg@10']:.4f}")
    row = next(line for line in text.splitlines() if line.startswith("| ndcg |"))
    assert row == f"| ndcg | {metrics['test/ndcg@10']:.4f} | {metrics['test/ndcg@20']:.4f} |"
    assert "#### Slices" in text and "#### Beyond accuracy" in text and "| refit/epochs |" in text
    cold = next(line for line in text.splitlines() if line.startswith("| cold_items |"))
    assert cold.split(" | ")[1] == "0" and cold.split(" | ")[2] == "–"             # no user in that slice
    assert "- **cold_items**: held-out items with no training interaction: only content reaches them" in text
    assert f"ndcg@10 {metrics['best/val/ndcg@10']:.4f}" in text


def test_tag_names_and_descriptions_match_docs():
    from recsys.train.tensorboard import BEST, DESCRIPTIONS, SLICES, tag
    assert tag("test/ndcg@10") == "test/ndcg@10" and tag("test/mrr@10") is None and tag("test/users") is None
    assert tag("test/new_users/recall@20") == "test/slices/new_users/recall@20"
    assert tag("test/hist_21+/precision@10") is None and tag("test/tail@20") == "test/variety/tail@20"
    assert tag("best/val/ndcg@10") == "val/best/ndcg@10" and tag("fit/seconds") is None
    doc = open(os.path.join(ROOT, "docs", "metrics.md")).read().split("## In TensorBoard")[1].split("\n## ")[0]
    rows = dict(re.findall(r"^\| ([\w /]+) \| (.+) \|$", doc, re.M))
    expected = {**DESCRIPTIONS, **{f"slice {k}": v for k, v in SLICES.items()}, "best/val": BEST}
    assert {k: v for k, v in rows.items() if k != "tag"} == expected


def test_trial_sessions_use_the_run_keys(tmp_path):
    from recsys.train.run import log_trials
    from recsys.train.search import SearchResult
    from recsys.train.specs import as_spec
    from recsys.train.tensorboard import hparam_keys

    class Logger:
        log_dir = str(tmp_path)
    trials = [{"number": 0, "state": "complete", "value": 0.25, "seconds": 1.0, "epochs": None, "params.lam": 200.0},
              {"number": 1, "state": "pruned", "value": None, "seconds": 2.0, "epochs": 3, "params.lam": 10.0}]
    log_trials([Logger()], SearchResult({"lam": 200.0}, 0.25, None, trials, as_spec({"kind": "ease", "lam": 200.0})))
    one = _read(str(tmp_path / "trials" / "001"))
    assert "experiment" not in one["hparams"]                   # the run declares the columns
    values = _session(one["hparams"]["session_start_info"])
    assert set(values) == set(hparam_keys()) and values["model.lam"] == 10.0 and values["model"] == "ease"
    assert one["hparams"]["session_end_info"].status == 2       # STATUS_FAILURE: pruned
    assert "trial/val/ndcg@10" not in one["scalars"] and one["scalars"]["trial/seconds"] == [(0, 2.0)]


def test_projector_metadata_columns(tmp_path):
    import numpy as np
    import torch

    from recsys.data.prepare import prepare_movielens
    from recsys.train.projector import item_columns, popularity_bucket, write_projector
    assert [popularity_bucket(c) for c in (0, 1, 4, 5, 19, 20, 99, 100)] == ["0", "1-4", "1-4", "5-19", "5-19",
                                                                             "20-99", "20-99", "100+"]
    prep = prepare_movielens(os.path.join(ROOT, "data", "ml-latest-small"))
    cols = item_columns(prep)
    assert list(cols) == ["title", "genres", "genre", "popularity", "status"]
    toy = prep.items.index([1]).item()                       # Toy Story (1995)
    assert cols["title"][toy] == "Toy Story (1995)"
    assert set(cols["genres"][toy].split()) == {"adventure", "animation", "children", "comedy", "fantasy"}
    counts = np.bincount(prep.train[:, 1], minlength=prep.n_items)
    assert cols["status"].count("cold") == int((counts == 0).sum()) == prep.report["n_cold_items"]
    write_projector(str(tmp_path), {"items/collaborative": torch.zeros(prep.n_items, 2)}, cols)
    config = open(tmp_path / "projector_config.pbtxt").read()
    assert 'tensor_name: "items/collaborative"' in config and "%2F" not in config and ":000" not in config
    lines = open(tmp_path / "items_collaborative" / "metadata.tsv").read().splitlines()
    assert lines[0] == "title\tgenres\tgenre\tpopularity\tstatus" and len(lines) == prep.n_items + 1


def test_progress_is_lines_in_a_log_file_and_a_bar_on_a_terminal():
    from recsys.train.progress import EpochLines, progress_callbacks

    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert [type(c) for c in progress_callbacks("auto", stream=io.StringIO())] == [EpochLines]
    assert progress_callbacks("auto", stream=Tty()) == []                 # Lightning's own bar
    assert progress_callbacks("lines", enabled=False) == []               # trainer.enable_progress_bar=false
    with pytest.raises(ValueError, match="progress='loud'"):
        progress_callbacks("loud")


def test_sparse_beta_warnings_are_silenced_by_importing_recsys():
    code = ("import recsys, torch\n"
            "torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1), (1, 2))\n"
            "import warnings; warnings.warn('still on')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "Sparse" not in res.stderr and "still on" in res.stderr   # only those two


def test_run_folder_is_named_by_the_model(tmp_path):
    res = subprocess.run([sys.executable, "train.py", "model=ease", "--cfg", "hydra", "--resolve"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = re.search(r"^  run:\n    dir: (\S+)", res.stdout, re.M).group(1)
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_ease", run_dir), run_dir
