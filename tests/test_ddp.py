"""Distributed training through Lightning's DDP on the CPU (gloo): loaders shard batches and
users per process, metric sums are all-reduced (no user counted twice or missed), each process
draws its own negatives, and rank 0 alone writes the export and metrics.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reduce_worker(rank: int, world: int, port: int, out: str):
    import torch.distributed as dist
    from recsys.eval.evaluation import MetricSums
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    s = MetricSums()
    if rank == 0:                                  # rank 1 holds no user at all
        s.update({"ndcg@10": torch.tensor([1.0, 0.5, 0.0]), "recall@20": torch.tensor([1.0, 1.0, 0.5])})
    s.all_reduce([10, 20])
    torch.save({"n": s.n_users, "m": s.compute()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_metric_sums_all_reduce_counts_each_user_once(tmp_path):
    import random
    port = random.randint(20000, 40000)
    torch.multiprocessing.spawn(_reduce_worker, args=(2, port, str(tmp_path / "r")), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"r.{rank}")
        assert got["n"] == 3
        assert got["m"]["ndcg@10"] == pytest.approx(0.5) and got["m"]["recall@20"] == pytest.approx(2.5 / 3)


def test_shards_cover_every_batch_and_user_once(monkeypatch):
    """With 2 processes, the two shards of an epoch's batches are the whole shuffle (padded
    by at most a batch), and the user chunks split the users without overlap."""
    import recsys.train.module as tr
    sampler = tr._EpochBatches(103, 10, seed=1)
    sampler.set_epoch(0)
    single = [i for b in sampler for i in b]
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(tr, "_rank_world", lambda r=rank: (r, 2))
        sampler.set_epoch(0)
        shards.append([list(b) for b in sampler])
        assert len(shards[-1]) == len(sampler) == 6                      # ceil(ceil(103 / 10) / 2)
    flat = [i for s in shards for b in s for i in b]
    assert sorted(set(flat)) == sorted(single) and len(flat) - 103 <= 10
    users = []
    for rank in (0, 1):
        monkeypatch.setattr(tr, "_rank_world", lambda r=rank: (r, 2))
        users.append([i for chunk in tr._UserShards(7, 2) for i in chunk])
    assert sorted(users[0] + users[1]) == list(range(7)) and not set(users[0]) & set(users[1])


def _run(tiny_files, run_dir, trainer: str):
    cmd = [sys.executable, "train.py", "model=hybrid", "data=csv", f"data.train={tiny_files['train']}",
           f"data.test={tiny_files['test']}", f"data.items={tiny_files['items']}", f"trainer={trainer}",
           "trainer.accelerator=cpu", "trainer.max_epochs=5", "model.optim.lr=0.05", "logger=none",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def test_two_process_ddp_on_cpu_matches_a_single_process_run(tiny_files, tmp_path):
    ddp = _run(tiny_files, tmp_path / "ddp", "ddp")
    one = _run(tiny_files, tmp_path / "one", "default")
    assert ddp["trainer/world_size"] == 2 and one["trainer/world_size"] == 1
    # the test loop ran sharded over the 2 processes and summed; the final report ranks all
    # users in one pass: equal only if every user was counted exactly once
    assert ddp["loop/test/ndcg@10"] == pytest.approx(ddp["test/ndcg@10"], abs=1e-9)
    assert ddp["loop/test/recall@20"] == pytest.approx(ddp["test/recall@20"], abs=1e-9)
    assert ddp["test/users"] == one["test/users"]
    # different batches and negatives, the same model quality within tolerance
    assert abs(ddp["test/ndcg@10"] - one["test/ndcg@10"]) < 0.1
    assert abs(ddp["test/recall@20"] - one["test/recall@20"]) < 0.1
    # one export, written once, that loads and reproduces the metrics
    assert [d for d in os.listdir(tmp_path / "ddp") if d.startswith(".export")] == []
    from recsys import Recommender
    import pandas as pd
    rec = Recommender.from_pretrained(str(tmp_path / "ddp" / "export"))
    test = pd.read_csv(tmp_path / "ddp" / "split" / "test.csv")
    m, _ = rec.evaluate(test["user"], test["item"], ks=[10, 20])
    assert m["test/ndcg@10"] == pytest.approx(ddp["test/ndcg@10"], abs=1e-6)
