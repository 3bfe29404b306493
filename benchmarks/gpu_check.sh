#!/usr/bin/env bash
# One-shot GPU check (a few minutes): the card, the GPU-marked tests, then full-ranking speed
# against the bare mm + topk floor on the GPU, and training throughput with bf16-mixed.
# The sequence model last: its training throughput and ranking against the floor.
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
python - <<'PY'
# the sequence model on the GPU: training events/s (bf16-mixed, full softmax at 40,000 items), then
# top-10 of 100,000 users next to the bare mm + topk floor; synthetic power-law data (file order
# is the sequence order)
import os, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, os.getcwd())
import lightning as L, torch
from benchmarks.scale import _prep, generate
from recsys.eval.ranking import topk
from recsys.train.build import build_sequence, eval_sets
from recsys.train.sequence_module import SequenceModule, sequence_loader
d = "outputs/scale/gpu_200000x40000x4000000"
generate(d, 200_000, 40_000, 4_000_000)
prep = _prep(d)
L.seed_everything(0)
model = build_sequence(prep)
module = SequenceModule(model, eval_sets(prep), loss="full")
n = torch.diff(model.seq_indptr).clamp(max=201) - 1
tr = L.Trainer(max_epochs=1, limit_train_batches=200, limit_val_batches=0, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="gpu", devices=1,
               precision="bf16-mixed")
loader = sequence_loader(model.seq_indptr, 256, 0, model.config.max_len)
events = sum(int(n[b[0]].clamp(min=0).sum()) for b, _ in zip(loader, range(200)))
t0 = time.perf_counter()
tr.fit(module, loader)
torch.cuda.synchronize()
s = time.perf_counter() - t0
print(f"| training, sequence dim 64 max_len 200, bf16-mixed, 200 batches of 256 users | {s:.1f} s | {events / s:,.0f} events/s |")
model = model.cuda().eval()
users = torch.arange(min(100_000, prep.n_users), device="cuda")
seen = (model.seq_indptr, model.seq_indices)
with torch.no_grad():
    topk(model, users[:1024], 10, seen)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    topk(model, users, 10, seen, chunk_size=4096)
    torch.cuda.synchronize(); s = time.perf_counter() - t0
    E = model.item_table(); H = torch.randn(len(users), 64, device="cuda")
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for a in range(0, len(users), 4096):
        torch.topk(H[a:a + 4096] @ E.T, 10, dim=1)
    torch.cuda.synchronize(); f = time.perf_counter() - t0
print(f"| ranking, sequence, {len(users):,} users x {prep.n_items:,} items | {s:.2f} s | {len(users) / s:,.0f} users/s, {s / f:.1f}x the mm + topk floor |")
PY
