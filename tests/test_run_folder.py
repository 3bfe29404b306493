"""Every model config composes and runs; the run folder is locked and never mixed; resume and
epoch errors are one line before anything trains; train.py ends bad input with one logged line."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "model", "*.yaml")))


def _tiny(tiny_files):
    return ["data=csv", f"data.train={tiny_files['train']}", f"data.test={tiny_files['test']}",
            f"data.items={tiny_files['items']}", "debug=fast", "trainer.accelerator=cpu", "logger=none",
            "callbacks=none", "report.projector=false"]


def test_every_model_config_is_covered():
    assert {"learned", "hybrid", "collaborative", "content", "itemknn", "userknn", "content_knn", "ease",
            "popularity", "blend", "blend_cold", "blend_mf"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_and_runs_one_step(model, tiny_files, tmp_path, compose):
    """configs/model/<model>.yaml: instantiated from its _target_, fitted (one short epoch for
    the learned ones), tested and exported; the export reloads and recommends."""
    import train
    from recsys import Recommender
    overrides = _tiny(tiny_files) + [f"model={model}"]
    if model.startswith("blend") and model != "blend_seq":     # (blend_seq's second part is EASE)
        overrides.append("model.second.k=10")
    m = train.run(compose(overrides, str(tmp_path)))
    assert 0.0 <= m["test/ndcg@10"] <= 1.0
    rec = Recommender.from_pretrained(str(tmp_path / "export"))
    ids, scores = rec.recommend("u1", k=3)
    assert len(ids) == 3 and (scores[:-1] >= scores[1:]).all()


def test_second_run_into_a_finished_run_folder_fails(tiny_files, tmp_path, compose):
    """A run folder holding a run is not written again (config, export and metrics would
    disagree); resuming with ckpt_path= is the exception."""
    import train
    from recsys.train.run import RunFolderError
    base = _tiny(tiny_files) + ["model=popularity"]
    train.run(compose(base, str(tmp_path)))
    before = open(tmp_path / "metrics.json").read()
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        train.run(compose(base, str(tmp_path)))
    assert open(tmp_path / "metrics.json").read() == before
    assert not (tmp_path / ".lock").exists()


def _record(d) -> dict:
    """Every file of a run folder (but checkpoints), path -> bytes."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def test_a_finished_run_is_never_replaced_nor_its_record_rewritten(tiny_files, tmp_path, compose):
    """A finished hybrid run: model=ease ckpt_path=last is refused naming what differs (it
    replaced the export, metrics and run_info with EASE's and exited 0), a second plain run is
    refused, and neither touches a byte of the folder (.hydra/, train.log included)."""
    import train
    from recsys.train.run import RunFolderError, folder_state
    base = _tiny(tiny_files) + ["model=hybrid", "model.dim=8"]
    train.run(compose(base, str(tmp_path)))
    assert folder_state(str(tmp_path)) == "finished"
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "train.log").exists()
    before = _record(tmp_path)
    with pytest.raises(RunFolderError, match=r"trained another model \(model.kind: 'learned' -> 'ease'"):
        train.run(compose(_tiny(tiny_files) + ["model=ease", "ckpt_path=last"], str(tmp_path)))
    with pytest.raises(RunFolderError, match=r"model.dim: 8 -> 16"):
        train.run(compose(base[:-1] + ["model.dim=16", "ckpt_path=last"], str(tmp_path)))
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        train.run(compose(base, str(tmp_path)))
    assert _record(tmp_path) == before


def test_a_refused_train_py_writes_nothing_into_the_folder(tiny_files, tmp_path):
    """Through Hydra itself (which wrote .hydra/*.yaml and train.log before train.py could
    refuse): the second run into a finished folder exits 1 with one line, and the folder's
    record is byte for byte what the first run left."""
    args = [sys.executable, "train.py", *_tiny(tiny_files), "model=popularity", f"hydra.run.dir={tmp_path}"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert {".hydra", "train.log", "run_state.json", "metrics.json"} <= set(os.listdir(tmp_path))
    assert "fitted popularity" in (tmp_path / "train.log").read_text()
    before = _record(tmp_path)
    again = subprocess.run(args + ["seed=7"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    text = again.stdout + again.stderr
    assert again.returncode == 1 and "already holds a finished run" in text and "Traceback" not in text
    assert _record(tmp_path) == before


def test_last_checkpoint_follows_every_epoch(tiny_files, tmp_path, compose):
    """last.ckpt holds the newest epoch even when validation did not improve (Lightning's
    save_last wrote it only with a new best, so a resume repeated the epochs since)."""
    import torch

    import train
    args = [a for a in _tiny(tiny_files) if a != "callbacks=none"] + [
        "model=hybrid", "model.dim=8", "model.optim.lr=1e-12", "trainer.max_epochs=3", "trainer.min_epochs=3",
        "callbacks.early_stopping.patience=10", "data.refit=false"]
    train.run(compose(args, str(tmp_path)))
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2                              # epochs 1 and 2 did not beat epoch 0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch000.ckpt", "last.ckpt"]


def test_a_failed_run_can_be_rerun_or_resumed(tiny_files, tmp_path, compose):
    """A run that fails leaves the folder "failed" (it was a dead end: a rerun was refused as
    'already holds a run' and a resume found no checkpoint): a rerun starts afresh, keeping
    the failed run's checkpoints aside; a resume without a checkpoint says to rerun."""
    import train
    from recsys.train.run import RunFolderError, folder_state
    base = _tiny(tiny_files) + ["model=popularity"]
    with pytest.raises(Exception):
        train.run(compose(base + ["data.items=/nonexistent/items.csv"], str(tmp_path)))
    assert folder_state(str(tmp_path)) == "failed"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch000.ckpt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="rerun without ckpt_path"):
        train.run(compose(base + ["ckpt_path=last"], str(tmp_path)))
    m = train.run(compose(base, str(tmp_path)))
    assert 0 <= m["test/ndcg@10"] <= 1 and folder_state(str(tmp_path)) == "finished"
    assert (tmp_path / "checkpoints.failed-1" / "epoch000.ckpt").read_bytes() == b"x"


def test_run_folder_in_use_by_a_live_process_fails_at_once(tmp_path):
    from recsys.train.run import RunFolderError, RunLock
    held = RunLock(str(tmp_path), resume=False)
    try:
        with pytest.raises(RunFolderError, match=f"being written by another run \\(pid {os.getpid()}\\)"):
            RunLock(str(tmp_path), resume=False)
    finally:
        held.release()
    (tmp_path / ".lock").write_text("999999999")          # left by a dead run: taken over
    RunLock(str(tmp_path), resume=False).release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("ckpt, match", [("last", "no last checkpoint yet"), ("/nonexistent/x.ckpt", "no checkpoint file")])
def test_missing_checkpoint_is_a_clear_error(ckpt, match, tiny_files, tmp_path, compose):
    import train
    from recsys.train.run import RunFolderError
    with pytest.raises(RunFolderError, match=match):
        train.run(compose(_tiny(tiny_files) + [f"ckpt_path={ckpt}"], str(tmp_path)))


def test_zero_epochs_is_refused_before_training(tiny_files, tmp_path, compose):
    import train
    with pytest.raises(ValueError, match="max_epochs=0 trains nothing"):
        train.run(compose(_tiny(tiny_files) + ["trainer.max_epochs=0"], str(tmp_path)))
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("override, words", [("model.alpha=1.5", "model.alpha=1.5 is outside [0, 1]"),
                                             ("model.dim=0", "model.dim=0 must be >= 1"),
                                             ("model=ease model.lam=-1", "model.lam=-1 must be a finite number > 0"),
                                             ("model=itemknn model.k=0", "model.k=0 must be a number >= 1"),
                                             ("model=sequence model.heads=3", "model.dim=64 must be a multiple of model.heads=3"),
                                             ("seed=abc", "seed='abc' must be an integer")])
def test_bad_model_values_end_train_py_with_one_line(override, words, tiny_files, tmp_path):
    """No traceback: exit 1 and the package's message on one logged line."""
    res = subprocess.run([sys.executable, "train.py", *_tiny(tiny_files), *override.split(), f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 1
    text = res.stdout + res.stderr
    assert words in text and "Traceback" not in text


def test_serve_py_bad_port_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "serve.py", f"export={tmp_path}", "port=abc", f"hydra.run.dir={tmp_path / 'h'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    text = res.stdout + res.stderr
    assert res.returncode == 1 and "serve: port='abc' must be an integer in 0..65535" in text and "Traceback" not in text


def test_evaluate_py_ends_bad_input_with_one_line(tmp_path):
    """evaluate.py on a folder that is no export: exit 1, the loader's message, no traceback."""
    (tmp_path / "test.csv").write_text("user,item\n1,2\n")
    res = subprocess.run([sys.executable, "evaluate.py", f"export={tmp_path / 'nothing'}",
                          f"test={tmp_path / 'test.csv'}", f"hydra.run.dir={tmp_path / 'h'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 1
    text = res.stdout + res.stderr
    assert "export directory not found" in text and "Traceback" not in text


def test_train_reports_the_reranked_lists_and_keeps_attributes(tiny_files, tmp_path, compose):
    """diversity.* in the train config: the test report is of the re-ranked lists (equal to what
    the export's Recommender re-ranks), the export says so, and keeps the item attributes."""
    import json

    import train
    from recsys import Recommender
    base = _tiny(tiny_files) + ["model=ease", "model.lam=10"]
    plain = train.run(compose(base, str(tmp_path / "plain")))
    mmr = train.run(compose(base + ["diversity.method=mmr", "diversity.strength=0.9"], str(tmp_path / "mmr")))
    assert mmr["test/ild@10"] > plain["test/ild@10"]
    meta = json.load(open(tmp_path / "mmr" / "export" / "config.json"))["meta"]
    assert meta["diversity"]["method"] == "mmr" and "diversity" not in json.load(
        open(tmp_path / "plain" / "export" / "config.json"))["meta"]
    rec = Recommender.from_pretrained(str(tmp_path / "mmr" / "export"))
    assert set(rec.attributes) == {"title", "genres"} and meta["events_through"] == 0
