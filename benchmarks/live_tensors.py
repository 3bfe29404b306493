"""Which tensors a `python train.py` run keeps alive at each stage: a census (after gc) of live
torch tensors and numpy arrays, by storage, at the start and end of each learned fit and at the
start of the final report, with the process RSS. For finding what a run holds that it no longer
needs (benchmarks/README.md, "`python train.py` end to end").

    python benchmarks/scale.py --users 200000 --items 40000 --interactions 4000000 --phases load
    python benchmarks/live_tensors.py --data outputs/scale/200000x40000x4000000 --out /tmp/census_run

The run is the end-to-end one at that size: sparse tables, batches of users' runs of 64, one
epoch, a refit (validation is carved from train).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def census(tag: str, top: int = 8) -> None:
    gc.collect()
    seen = {}
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor):
                st = o.untyped_storage()
                seen[st.data_ptr()] = (st.nbytes(), tuple(o.shape), str(o.dtype))
            elif isinstance(o, np.ndarray) and o.base is None:
                seen[("np", o.ctypes.data)] = (o.nbytes, o.shape, str(o.dtype))
        except Exception:           # tensors without storage (meta, sparse views)
            pass
    total = sum(v[0] for v in seen.values())
    print(f"== {tag}: RSS {rss_mb()} MB, live tensors + arrays {total >> 20} MB", flush=True)
    for nbytes, shape, dtype in sorted(seen.values(), key=lambda v: -v[0])[:top]:
        print(f"   {nbytes >> 20:6d} MB {shape} {dtype}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a folder with train/test/items.parquet (benchmarks/scale.py)")
    ap.add_argument("--out", required=True, help="the run folder (must not hold a run)")
    a = ap.parse_args()
    import train
    import recsys.train.specs as specs
    from tests.conftest import compose_train

    fit = specs.Learned.fit

    def watched_fit(self, prep, sets, ctx, test=True):
        census(f"fit start ({len(prep.train):,} training pairs)")
        out = fit(self, prep, sets, ctx, test)
        census("fit end")
        return out
    specs.Learned.fit = watched_fit
    report = train.final_report

    def watched_report(*args, **kw):
        census("report start")
        return report(*args, **kw)
    train.final_report = watched_report
    D = a.data
    cfg = compose_train(["data=csv", f"data.train={D}/train.parquet", f"data.test={D}/test.parquet",
                         f"data.items={D}/items.parquet", "data.tokens.min_count=2", "model.optim.sparse=true",
                         "model.optim.batching=users", "model.optim.user_run=64", "model.optim.batch_size=131072",
                         "trainer.max_epochs=1", "logger=none", "progress=lines", "report.projector=false"], a.out)
    train.run(cfg)


if __name__ == "__main__":
    main()
