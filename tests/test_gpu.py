"""CUDA checks (marker `gpu`, skipped without a GPU; benchmarks/gpu_check.sh runs them): the
same scorer gives the same rankings on the GPU as on the CPU, training runs with bf16-mixed,
and an export loads onto the GPU."""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def prep():
    from recsys.data.prepare import prepare_movielens
    return prepare_movielens(os.path.join(ROOT, "data", "ml-latest-small"))


@pytest.mark.parametrize("variant", ["collaborative", "content", "hybrid"])
def test_learned_scores_match_cpu(prep, variant):
    from recsys.train.build import build_scorer, csr
    from recsys.eval.ranking import topk
    torch.manual_seed(0)
    cpu = build_scorer(prep, variant=variant, dim=32, cold_k=5).eval()
    gpu = build_scorer(prep, variant=variant, dim=32, cold_k=5).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    users = torch.arange(prep.n_users)
    seen = csr(prep.train, prep.n_users)
    _, s_cpu = topk(cpu, users, 10, seen)
    _, s_gpu = topk(gpu, users.cuda(), 10, tuple(t.cuda() for t in seen))
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("model", [{"kind": "itemknn", "k": 50}, {"kind": "content_knn", "k": 50},
                                   {"kind": "ease", "lam": 200.0, "cold_k": 10}])
def test_memory_models_match_cpu(prep, model):
    from recsys.train.build import build_memory
    users = torch.arange(0, prep.n_users, 7)
    cpu = build_memory(prep, model)(users)
    gpu = build_memory(prep, model, device="cuda")(users.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)


def test_training_bf16_and_export_on_gpu(tmp_path):
    from tests.conftest import compose_train
    import train
    from recsys import Recommender
    m = train.run(compose_train(["debug=fast", "trainer=gpu", "logger=none"], str(tmp_path)))
    assert 0 <= m["test/ndcg@10"] <= 1
    rec = Recommender.from_pretrained(os.path.join(str(tmp_path), "export"), device="cuda")
    ids, _ = rec.recommend([1, 2], k=5)
    assert ids.shape == (2, 5) and rec.device.type == "cuda"


def test_sequence_scores_match_cpu_and_train_bf16(prep, tmp_path):
    """The sequence model: the same top-10 scores on the GPU (SDPA's CUDA kernels) as on the
    CPU, and a bf16-mixed training run of it ends with an export that loads on the GPU."""
    from recsys.eval.ranking import topk
    from recsys.train.build import build_sequence
    torch.manual_seed(0)
    cpu = build_sequence(prep, dim=32, blocks=1).eval()
    gpu = build_sequence(prep, dim=32, blocks=1)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    users = torch.arange(prep.n_users)
    seen = (cpu.seq_indptr, cpu.seq_indices)
    _, s_cpu = topk(cpu, users, 10, seen)
    _, s_gpu = topk(gpu, users.cuda(), 10, tuple(t.cuda() for t in seen))
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, atol=1e-3, rtol=1e-3)
    from tests.conftest import compose_train
    import train
    from recsys import Recommender
    m = train.run(compose_train(["debug=fast", "trainer=gpu", "logger=none", "model=sequence",
                                 "data.split.kind=leave_last"], str(tmp_path)))
    assert 0 <= m["test/ndcg@10"] <= 1
    rec = Recommender.from_pretrained(os.path.join(str(tmp_path), "export"), device="cuda")
    assert rec.recommend_for_history([1, 2, 3], k=5)[0].shape == (5,)
