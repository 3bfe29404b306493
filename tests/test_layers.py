"""The package's layers and their import direction, read from the code (every import, also those
inside functions):

    sparse  <  data  <  models  <  eval  <  serve  <  train

A layer imports only itself and the layers below it. The loading / serving path (serve/ and
what it imports) reaches neither the pandas-based preparation (data/prepare.py, data/splits.py)
nor Lightning nor Hydra; models/ and below import neither Lightning nor Hydra either."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "recsys")
LAYERS = ["sparse", "data", "models", "eval", "serve", "train"]
PREPARATION = {"recsys.data.prepare", "recsys.data.splits"}
TRAINING_LIBS = {"lightning", "pytorch_lightning", "hydra", "omegaconf"}


def _modules() -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imports(path: str, top_level_only: bool = False) -> set[str]:
    names = set()
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "recsys" and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer():
    mods = [m for m in _modules() if m not in ("recsys", "recsys.version")]
    assert mods and all(_layer(m) for m in mods), [m for m in mods if not _layer(m)]


def test_layers_import_only_downwards():
    bad = []
    for mod, path in _modules().items():
        mine = _layer(mod)
        if mine is None:
            continue
        for name in _imports(path):
            other = _layer(name)
            if other is not None and LAYERS.index(other) > LAYERS.index(mine):
                bad.append(f"{mod} imports {name}")
            if name.split(".")[0] in TRAINING_LIBS and mine in ("sparse", "data", "models", "eval", "serve"):
                bad.append(f"{mod} imports {name}")
    assert not bad, bad


def test_serving_path_never_reaches_preparation():
    """Everything serve/ imports (also inside functions), followed transitively through the
    package, avoids the pandas-based preparation. The package root counts with its module-level
    imports only: its `fit` function is the training entry point, imported when called."""
    mods = _modules()
    seen, todo = set(), [m for m in mods if _layer(m) == "serve"]
    while todo:
        m = todo.pop()
        if m in seen or m not in mods:
            continue
        seen.add(m)
        for name in _imports(mods[m], top_level_only=(m == "recsys")):
            for cand in (name, name.rsplit(".", 1)[0]):
                if cand in mods:
                    todo.append(cand)
    assert not seen & PREPARATION, sorted(seen & PREPARATION)


def test_import_recsys_loads_no_training_stack():
    """`import recsys` (Recommender, the public names) loads no Lightning, Hydra or preparation."""
    code = ("import sys, recsys; from recsys import Recommender; "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in %r or k in %r))" % (TRAINING_LIBS, PREPARATION))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"
