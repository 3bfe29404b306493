"""Shared fixtures: tiny CSV datasets and composed Hydra configs for end-to-end runs."""
from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def write_tiny_dataset(d, seed: int = 0, n_users: int = 30, n_items: int = 40):
    """Two taste groups (even / odd items) with string ids, a train file, a test file that also
    holds one unknown user and one unknown item, and an items file with two text columns (plus
    one item nobody interacted with)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        for i in rng.choice(liked, size=12, replace=False):
            rows.append((f"u{u}", f"m{i}", float(rng.integers(1, 6)), int(rng.integers(1e9, 2e9))))
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    test_mask = rng.random(len(df)) < 0.2
    train, test = df[~test_mask], df[test_mask]
    test = pd.concat([test, pd.DataFrame([("ghost", "m0", 5.0, 1), ("u0", "m999", 5.0, 1)],
                                         columns=df.columns)])
    items = pd.DataFrame({"item": [f"m{i}" for i in range(n_items + 1)],
                          "title": [f"movie {i} {'even' if i % 2 == 0 else 'odd'}" for i in range(n_items + 1)],
                          "genres": ["drama" if i % 2 == 0 else "comedy" for i in range(n_items + 1)]})
    paths = {k: os.path.join(d, f"{k}.csv") for k in ("train", "test", "items")}
    train.to_csv(paths["train"], index=False)
    test.to_csv(paths["test"], index=False)
    items.to_csv(paths["items"], index=False)
    return paths


@pytest.fixture
def tiny_files(tmp_path):
    return write_tiny_dataset(str(tmp_path))


def compose_train(overrides: list[str], output_dir: str):
    """The real train config, composed as `python train.py OVERRIDES` would, outside a Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={output_dir}",
                                           *overrides])


@pytest.fixture
def compose():
    return compose_train
