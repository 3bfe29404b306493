#!/usr/bin/env bash
# One-shot GPU check (a few minutes): the card, the GPU-marked tests, then full-ranking speed
# against the bare mm + topk floor on the GPU, and training throughput with bf16-mixed.
# Usage, from the repository root of an installed checkout on a CUDA machine:
#     bash benchmarks/gpu_check.sh  [users] [items]        (default 1,000,000 x 100,000)
# Prints a short table; paste it with the card into benchmarks/README.md ("GPU").
set -euo pipefail
U=${1:-1000000}
I=${2:-100000}
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for GPU machines"
p = torch.cuda.get_device_properties(0)
print(f"card: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
python -m pytest -q -m gpu tests/test_gpu.py
for v in collaborative hybrid; do
  python benchmarks/ranking_speed.py --device cuda --users "$U" --items "$I" --variant "$v" --repeats 3
done
python - <<'PY'
# training throughput on the GPU: the learned hybrid, bf16-mixed, synthetic power-law data
import os, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, os.getcwd())
import lightning as L, torch
from benchmarks.scale import _prep, generate
from recsys.train.build import build_scorer, eval_sets
from recsys.train.module import RecsysModule, train_loader
d = "outputs/scale/gpu_200000x40000x4000000"
generate(d, 200_000, 40_000, 4_000_000)
prep = _prep(d)
L.seed_everything(0)
module = RecsysModule(build_scorer(prep, variant="hybrid", dim=64), eval_sets(prep), loss="softmax", n_neg=1024)
tr = L.Trainer(max_epochs=1, limit_train_batches=300, limit_val_batches=0, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="gpu", devices=1,
               precision="bf16-mixed")
t0 = time.perf_counter()
tr.fit(module, train_loader(prep.train, 1024, 0))
torch.cuda.synchronize()
s = time.perf_counter() - t0
print(f"| training, hybrid dim 64, bf16-mixed, 300 batches of 1,024 | {s:.1f} s | {300 * 1024 / s:,.0f} interactions/s |")
PY
