"""End to end through the real Hydra config: train one short epoch, evaluate, export, reload."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["debug=fast", "trainer.accelerator=cpu"]


def _scalars(logdir: str) -> dict[str, list]:
    """{tag: values} of a run's scalars: Lightning's (train/, val/) and the summary's (tensor
    summaries of the scalars plugin: test/, val/best/)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out: dict[str, list] = {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    for t in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(t).plugin_data.plugin_name == "scalars":
            out[t] = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)]
    return out


@pytest.fixture(scope="module")
def movielens_run(tmp_path_factory):
    """One run on the embedded MovieLens data: 2 epochs of 2 batches each."""
    from tests.conftest import compose_train
    import train
    out = str(tmp_path_factory.mktemp("run"))
    cfg = compose_train([*FAST, "trainer.max_epochs=2"], out)
    metrics = train.run(cfg)
    return out, metrics


def test_run_writes_metrics_export_split_and_tensorboard(movielens_run):
    """metrics.json holds every test metric at K=10,20; TensorBoard holds val/ndcg@10 for each
    epoch (x = epoch) and the test metrics under their tags (tensorboard.tag); the export and
    the stored split exist."""
    from recsys.train.tensorboard import tag
    out, metrics = movielens_run
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    for m in ("recall", "ndcg", "precision", "hit", "mrr"):
        for k in (10, 20):
            assert 0.0 <= saved[f"test/{m}@{k}"] <= 1.0
    assert saved["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"])
    assert saved["data"]["n_users"] == 610
    for f in ("config.json", "model.safetensors", "extras.safetensors", "users.json", "items.json", "tokens.json"):
        assert os.path.exists(os.path.join(out, "export", f))
    assert os.path.exists(os.path.join(out, "split", "test.csv"))
    scalars = _scalars(os.path.join(out, "tensorboard"))
    assert len(scalars["val/ndcg@10"]) == 2           # one per epoch
    assert len(scalars["val/recall@10"]) == 2
    assert scalars["test/ndcg@10"] == [pytest.approx(metrics["test/ndcg@10"], rel=1e-5)]
    assert max(scalars["val/best/ndcg@10"] + scalars["val/ndcg@10"]) == scalars["val/best/ndcg@10"][0]
    assert "train/loss_epoch" in scalars
    # the report: slices and beyond-accuracy metrics, in metrics.json and TensorBoard
    for name in ("test/cold_items/recall@20", "test/warm_items/ndcg@10", "test/hist_6-20/ndcg@10",
                 "test/hist_21+/recall@10", "test/coverage@10", "test/gini@10", "test/novelty@10",
                 "test/ild@10", "test/tail@10"):
        assert name in saved, name
        assert scalars[tag(name)] == [pytest.approx(saved[name], rel=1e-5)], name
    assert saved["test/cold_items/users"] > 0              # the default split has cold test items
    assert sum(saved[f"test/hist_{b}/users"] for b in ("1-5", "6-20", "21+")) == saved["test/users"]
    # what reproduces the run
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["seed"] == 2026 and info["split"]["seed"] == 2026 and info["torch"]
    assert any(p.endswith("ratings.csv") and len(h) == 64 for p, h in info["data_sha256"].items())
    assert info["config"]["model"]["variant"] == "hybrid"
    # per-user metrics for paired comparisons
    import pandas as pd
    per = pd.read_csv(os.path.join(out, "per_user.csv"))
    assert len(per) == saved["test/users"]
    assert per["ndcg@10"].mean() == pytest.approx(saved["test/ndcg@10"], abs=1e-9)
    # item embeddings in the Projector, plain tensor names, metadata columns
    proj = os.path.join(out, "tensorboard", "projector_config.pbtxt")
    assert os.path.exists(proj) and 'tensor_name: "items/collaborative"' in open(proj).read()
    with open(os.path.join(out, "tensorboard", "items_collaborative", "metadata.tsv")) as f:
        head, *rows = f.read().splitlines()
    assert head.split("\t") == ["title", "genres", "genre", "popularity", "status"]
    toy = next(r.split("\t") for r in rows if r.startswith("Toy Story (1995)"))
    assert "animation" in toy[1].split() and toy[3] == "100+" and toy[4] == "warm"
    assert len(rows) == saved["data"]["n_items"]


def test_compare_two_runs_cli(movielens_run, tmp_path, capsys):
    """evaluate.py compare=[A,B] pairs users of two runs; a run against itself differs by 0."""
    out, metrics = movielens_run
    from omegaconf import OmegaConf
    import evaluate
    cfg = OmegaConf.load(os.path.join(ROOT, "configs", "evaluate.yaml"))
    del cfg["hydra"]
    cfg.compare = [out, out]
    cfg.bootstrap = 500
    cfg.out = str(tmp_path / "cmp.json")
    res = evaluate.run(cfg)
    assert res["users"] == metrics["test/users"] and res["only_a"] == 0
    row = next(r for r in res["metrics"] if r["metric"] == "ndcg@10")
    assert row["diff"] == 0 and row["lo"] == 0 and row["hi"] == 0
    assert "95% CI" in capsys.readouterr().out
    assert json.load(open(cfg.out))["users"] == res["users"]


def test_evaluate_py_recomputes_the_run_metrics(movielens_run):
    """evaluate.py on the run folder gives the training run's test metrics (same split, same mask)."""
    out, metrics = movielens_run
    from omegaconf import OmegaConf
    import evaluate
    cfg = OmegaConf.load(os.path.join(ROOT, "configs", "evaluate.yaml"))
    del cfg["hydra"]
    cfg.run_dir = out
    again = evaluate.run(cfg)
    accuracy = [k for k in metrics if k.startswith("test/") and k.count("/") == 1
                and k.split("/")[1].split("@")[0] in ("recall", "precision", "ndcg", "hit", "mrr", "map")]
    assert "test/ndcg@10" in accuracy
    for k in accuracy:
        assert again[k] == pytest.approx(metrics[k], abs=1e-9), k


def test_export_loads_in_a_process_without_hydra_or_lightning(movielens_run):
    """A fresh process that imports only recsys loads the export and reproduces the run's
    test NDCG@10, and never imports hydra or lightning."""
    out, metrics = movielens_run
    code = f"""
import sys, json, pandas as pd
from recsys import Recommender
rec = Recommender.from_pretrained({os.path.join(out, 'export')!r}, device="cpu")
test = pd.read_csv({os.path.join(out, 'split', 'test.csv')!r})
m, _ = rec.evaluate(test["user"], test["item"], ks=[10, 20])
ids, scores = rec.recommend([1, 2], k=5)
assert ids.shape == (2, 5)
bad = [k for k in sys.modules if k.split(".")[0] in ("hydra", "lightning", "pytorch_lightning", "omegaconf")]
print(json.dumps({{"ndcg": m["test/ndcg@10"], "bad": bad}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["bad"] == []
    assert got["ndcg"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-9)


def test_cli_trains_on_presplit_csv_files_and_drops_unknown_test_rows(tiny_files, tmp_path):
    """`python train.py data=csv data.train=... data.test=... data.items=...` on files the project
    has never seen: exit 0, unknown test user/item reported and dropped, export written."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "data=csv", f"data.train={tiny_files['train']}",
           f"data.test={tiny_files['test']}", f"data.items={tiny_files['items']}",
           *FAST, f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["test_rows_unknown_user"] == 1
    assert metrics["data"]["test_rows_unknown_item"] == 1
    assert (run_dir / "export" / "model.safetensors").exists()
    assert "ndcg" in res.stdout            # the printed table


def test_cli_sweep_over_alpha(tiny_files, tmp_path):
    """`python train.py -m model.alpha=0,1` runs one job per value, each with its metrics.json."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "model.alpha=0,1", "data=csv",
           f"data.train={tiny_files['train']}", f"data.test={tiny_files['test']}",
           f"data.items={tiny_files['items']}", *FAST, f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0_hybrid", "1_hybrid"):       # job number and model (configs/hydra/default.yaml)
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert "best/val/ndcg@10" in m


def test_unknown_config_key_is_refused(tmp_path):
    """Hydra's strict mode: a misspelt key fails with a message naming it."""
    res = subprocess.run([sys.executable, "train.py", "model.alhpa=0.3", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode != 0
    assert "alhpa" in res.stderr


@pytest.mark.parametrize("model", ["itemknn", "blend"])
def test_closed_form_models_run_through_the_cli(model, tiny_files, tmp_path):
    """`model=itemknn` / `model=blend` fit without epochs, yet write metrics.json, TensorBoard
    val/best and test metrics (their one validation is no curve) and an export that the
    Recommender loads."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"model={model}", "data=csv", f"data.train={tiny_files['train']}",
           f"data.test={tiny_files['test']}", f"data.items={tiny_files['items']}", f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test/ndcg@10"] <= 1 and metrics["fit/seconds"] >= 0
    scalars = _scalars(str(run_dir / "tensorboard"))
    assert scalars["test/ndcg@10"] == [pytest.approx(metrics["test/ndcg@10"], rel=1e-5)]
    assert scalars["val/best/ndcg@10"] == [pytest.approx(metrics["best/val/ndcg@10"], rel=1e-5)]
    assert "val/ndcg@10" not in scalars
    from recsys import Recommender
    rec = Recommender.from_pretrained(str(run_dir / "export"))
    ids, _ = rec.recommend("u1", k=3)
    assert len(ids) == 3


def test_same_seed_same_metrics_on_the_cpu(movielens_run, tmp_path):
    """The same config and seed give identical metrics in a second run (CPU)."""
    from tests.conftest import compose_train
    import train
    _, first = movielens_run
    again = train.run(compose_train([*FAST, "trainer.max_epochs=2", "logger=none"], str(tmp_path)))
    keys = [k for k in first if k.startswith(("test/", "best/"))]
    assert len(keys) > 20
    for k in keys:
        assert again[k] == first[k], k


def test_new_user_protocol_through_the_cli(tmp_path):
    """experiment=newusers: train.py reports test/new_users/* for the held-out users."""
    from tests.conftest import compose_train
    import train
    m = train.run(compose_train(["experiment=newusers", "model=itemknn", "model.k=20", "logger=none"], str(tmp_path)))
    assert m["test/new_users/users"] == 61
    assert 0 < m["test/new_users/ndcg@10"] <= 1
    assert m["data"]["n_new_users"] == 61


def test_blend_with_a_learned_part(tmp_path):
    """model=blend_mf: the MF part trains with Lightning, content KNN fits, the blend is tested,
    exported and reloads to the same scores."""
    from tests.conftest import compose_train
    import train
    from recsys import Recommender
    m = train.run(compose_train([*FAST, "model=blend_mf", "model.second.k=20"], str(tmp_path)))
    assert 0 <= m["test/ndcg@10"] <= 1 and "test/cold_items/recall@20" in m
    rec = Recommender.from_pretrained(os.path.join(str(tmp_path), "export"))
    assert rec.scorer.config.variant == "blend(collaborative,content_knn)"
    import pandas as pd
    test = pd.read_csv(os.path.join(str(tmp_path), "split", "test.csv"))
    again, _ = rec.evaluate(test["user"], test["item"], ks=[10, 20])
    assert again["test/ndcg@10"] == pytest.approx(m["test/ndcg@10"], abs=1e-6)


def test_cold_fill_of_the_learned_hybrid_reaches_the_report_and_export(tmp_path):
    """model.cold_k: the final report ranks with the model in eval mode (cold items borrow
    collaborative scores), exactly as the loaded export does."""
    from tests.conftest import compose_train
    import train
    from recsys import Recommender
    m = train.run(compose_train([*FAST, "experiment=colditems", "model.cold_k=10", "logger=none"], str(tmp_path)))
    assert "loop/test/ndcg@10" not in m        # one process: the report's pass is the only test pass
    rec = Recommender.from_pretrained(os.path.join(str(tmp_path), "export"))
    import pandas as pd
    test = pd.read_csv(os.path.join(str(tmp_path), "split", "test.csv"))
    again, _ = rec.evaluate(test["user"], test["item"], ks=[10, 20])
    assert again["test/ndcg@10"] == pytest.approx(m["test/ndcg@10"], abs=1e-6)
    assert m["test/cold_items/recall@20"] > 0
    s = rec.scorer
    cold = ~s.item_warm
    cf = s.component_scores(torch.arange(5), s.item_side())["cf"]
    assert cf[:, cold].std() > 0            # borrowed scores differ per item, not one neutral value


def test_sparse_user_table_trains_and_resumes(tmp_path):
    """model.optim.sparse=true: the user table gets sparse gradients and lazy Adam updates
    (only the batch's rows move); the run trains, tests, checkpoints and resumes."""
    from tests.conftest import compose_train
    import train
    from recsys.train.module import MixedAdam, RecsysModule
    from recsys.train.build import build_scorer, eval_sets
    from recsys.data.prepare import prepare_movielens
    over = ["trainer.max_epochs=2", "+trainer.limit_train_batches=3", "trainer.enable_progress_bar=false",
            "logger=none", "model.optim.sparse=true", "trainer.accelerator=cpu"]
    m = train.run(compose_train(over, str(tmp_path)))
    assert 0 < m["test/ndcg@10"] <= 1
    again = train.run(compose_train([*over[1:], "trainer.max_epochs=3", "ckpt_path=last"], str(tmp_path)))
    assert 0 < again["test/ndcg@10"] <= 1
    # one step by hand: untouched user rows do not move, the batch's rows do
    prep = prepare_movielens(os.path.join(ROOT, "data", "ml-latest-small"))
    torch.manual_seed(0)
    module = RecsysModule(build_scorer(prep, variant="collaborative", dim=8), eval_sets(prep), loss="softmax",
                          n_neg=16, sparse=True, weight_decay=1e-4)
    opt = module.configure_optimizers()
    assert isinstance(opt, MixedAdam)
    before = module.scorer.user_emb.weight.detach().clone()
    batch = (torch.tensor([[0, 1], [2, 3]]),)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert module.scorer.user_emb.weight.grad.is_sparse
    opt.step()
    after = module.scorer.user_emb.weight.detach()
    assert not torch.equal(after[[0, 2]], before[[0, 2]]) and torch.equal(after[3:], before[3:])
