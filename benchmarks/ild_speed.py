"""Intra-list distance of the test report (recsys/eval/beyond.py) on a 100,000-item x 20,000-token
table, against an older copy of the module, side by side in one process:

    git show 25fe000:recsys/eval/beyond.py > /tmp/beyond_old.py
    python benchmarks/ild_speed.py --old /tmp/beyond_old.py

Items have 6 distinct tokens with random weights (unit rows); lists are 20 random items.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recsys.eval.beyond import intra_list_distance, unit_rows    # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="path of an older beyond.py to time beside this one")
    ap.add_argument("--lists", default="4096,20000")
    a = ap.parse_args()
    torch.manual_seed(0)
    I, T, nnz = 100_000, 20_000, 6
    indptr = torch.arange(0, I * nnz + 1, nnz)
    indices = (torch.arange(I)[:, None] * 7 + torch.arange(nnz)[None, :] * 3001).remainder(T).sort(1).values.flatten()
    U = unit_rows(indptr, indices, torch.rand(I * nnz), T)
    old = None
    if a.old:
        spec = importlib.util.spec_from_file_location("beyond_old", a.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    for n in map(int, a.lists.split(",")):
        lists = torch.randint(I, (n, 20))
        t = time.perf_counter()
        new = intra_list_distance(lists, U)
        row = f"{n} lists of 20: {time.perf_counter() - t:.3f} s"
        if old is not None:
            t = time.perf_counter()
            ref = old.intra_list_distance(lists, U)
            t_old = time.perf_counter() - t
            row += f", old {t_old:.2f} s, max |difference| {float((ref - new).abs().max()):.1e}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
