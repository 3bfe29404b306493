"""Recommender.recommend is safe to call from several threads at once: 8 threads, each asking
for many users repeatedly, get exactly the serial results (learned and KNN models, whose
ranking itself uses worker threads and reused scratch buffers)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from recsys import Recommender
from recsys.train.build import build_memory, build_scorer, eval_sets
from recsys.data.prepare import prepare_files
from recsys.serve.export import save_export

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("model", ["hybrid", "itemknn", "blend"])
def test_recommend_from_8_threads_equals_serial(model, tiny_files, tmp_path):
    prep = prepare_files(train=tiny_files["train"], test=tiny_files["test"], items=tiny_files["items"])
    if model == "hybrid":
        torch.manual_seed(0)
        scorer = build_scorer(prep, variant="hybrid", dim=8)
        with torch.no_grad():
            for p in scorer.parameters():
                p.normal_()
    elif model == "itemknn":
        scorer = build_memory(prep, {"kind": "itemknn", "k": 5})
    else:
        scorer = build_memory(prep, {"kind": "blend", "alpha": 0.5, "norm": "max",
                                     "first": {"kind": "itemknn", "k": 5}, "second": {"kind": "content_knn", "k": 5}})
    sets = eval_sets(prep)
    path = save_export(str(tmp_path / "export"), scorer, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       sets["test_seen"], torch.from_numpy(prep.bags.idf))
    rec = Recommender.from_pretrained(path)
    users = list(prep.users.ids)
    rng = np.random.default_rng(0)
    requests = [[users[j] for j in rng.choice(len(users), size=int(rng.integers(1, len(users))))] for _ in range(64)]
    serial = [rec.recommend(r, k=3, chunk_size=2) for r in requests]
    with ThreadPoolExecutor(8) as ex:
        parallel = list(ex.map(lambda r: rec.recommend(r, k=3, chunk_size=2), requests))
    for (ids_s, sc_s), (ids_p, sc_p) in zip(serial, parallel):
        assert np.array_equal(np.asarray(ids_s, dtype=object), np.asarray(ids_p, dtype=object))
        assert torch.equal(torch.as_tensor(sc_s), torch.as_tensor(sc_p))
