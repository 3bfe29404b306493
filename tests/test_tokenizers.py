"""The three tokenizers (word, bpe, pretrained): what they produce, that they are deterministic,
that the pretrained token table is all-MiniLM-L6-v2's and stays frozen unless asked, and that
each trains, exports and loads in a fresh process to identical scores, offline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from recsys.data.subword import BpeTokenizer, PretrainedTokenizer
from recsys.data.tokenize import make_tokenizer, tokenizer_from_json

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["debug=fast", "trainer.accelerator=cpu", "logger=none"]

TEXTS = [{"title": f"Star Wars: Episode {r} ({1977 + i})", "genres": "Action Adventure Sci-Fi"}
         for i, r in enumerate(["IV", "V", "VI"])] + \
        [{"title": "Starship Troopers (1997)", "genres": "Action Sci-Fi War"},
         {"title": "Stargate (1994)", "genres": "Action Adventure Sci-Fi"},
         {"title": "Toy Story (1995)", "genres": "Animation Children Comedy"}] * 3


def test_bpe_learns_subwords_deterministically_and_round_trips(tmp_path):
    a = BpeTokenizer(vocab_size=60, min_frequency=2, prefix_fields=["genres"]).fit(TEXTS)
    b = BpeTokenizer(vocab_size=60, min_frequency=2, prefix_fields=["genres"]).fit(TEXTS)
    toks = a.tokenize_fields(TEXTS[3])
    assert toks == b.tokenize_fields(TEXTS[3])                   # same text, same subwords
    assert a._tok.get_vocab_size() <= 60
    assert all(t.startswith("genres:") for t in a.tokenize("Action War", "genres"))
    assert not any(t in ("(", ")", ":") for t in toks)            # punctuation is dropped
    # a word the catalog rarely uses is split into learned pieces, not lost
    assert len(a.tokenize("Starships")) >= 2 and "".join(a.tokenize("Starships")).replace("##", "") == "starships"
    a.save_files(str(tmp_path))
    back = tokenizer_from_json(json.loads(json.dumps(a.to_json())), str(tmp_path))
    assert back.tokenize_fields(TEXTS[4]) == a.tokenize_fields(TEXTS[4])
    wp = make_tokenizer("bpe", model="wordpiece", vocab_size=80).fit(TEXTS)
    assert wp.tokenize("Starships")[0] == "star" and all(t.startswith("##") for t in wp.tokenize("Starships")[1:])


def test_bpe_errors():
    with pytest.raises(ValueError, match="model='sentencepiece'"):
        BpeTokenizer(model="sentencepiece")
    with pytest.raises(RuntimeError, match="not trained"):
        BpeTokenizer().tokenize("x")
    with pytest.raises(ValueError, match="data.tokens.kind='gpt'"):
        make_tokenizer("gpt")
    with pytest.raises(ValueError, match="prefix_fields must be empty"):
        make_tokenizer("pretrained", prefix_fields=["genres"])


def test_pretrained_tokens_and_embeddings_are_minilms():
    """Known answers from the model files themselves: WordPieces of a word it splits, its
    vocabulary size, and its embedding rows (an unknown token gets the [UNK] row)."""
    from safetensors import safe_open
    tok = PretrainedTokenizer()
    assert tok.tokenize("Toy Story pixar") == ["toy", "story", "pi", "##xa", "##r"]
    vocab = tok.vocabulary()
    assert len(vocab) == 30522 and vocab[100] == "[UNK]" and vocab.index("toy") == 9121
    rows = tok.embedding_rows(["toy", "[UNK]", "not-a-wordpiece"])
    with safe_open(os.path.join(tok.model_dir(), "model.safetensors"), "np") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    assert rows.shape == (3, 384)
    np.testing.assert_array_equal(rows[0], table[9121])
    np.testing.assert_array_equal(rows[2], table[100])


def test_pretrained_from_a_directory_and_clear_errors(tmp_path):
    src = PretrainedTokenizer().model_dir()
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(os.path.join(src, "tokenizer.json"), d)
    tok = PretrainedTokenizer(path=str(d))
    assert tok.tokenize("toy story") == ["toy", "story"]
    with pytest.raises(FileNotFoundError, match="model.safetensors missing"):
        tok.embedding_rows(["toy"])
    with pytest.raises(FileNotFoundError, match="tokenizer.json missing"):
        PretrainedTokenizer(path=str(tmp_path)).tokenize("x")
    with pytest.raises(ValueError, match="only all-MiniLM-L6-v2 ships offline"):
        PretrainedTokenizer(name="bert-large")


def test_pretrained_table_is_frozen_unless_asked(tmp_path):
    """freeze=true: the 384-wide table gets no gradient, only the projection learns; freeze=false
    fine-tunes it too. Baking the projection into a plain table keeps the scores."""
    from tests.conftest import write_tiny_dataset
    from recsys.train.build import build_scorer
    from recsys.data.prepare import prepare_files
    files = write_tiny_dataset(str(tmp_path))
    for freeze in (True, False):
        prep = prepare_files(train=files["train"], test=files["test"], items=files["items"],
                             tokens={"kind": "pretrained", "freeze": freeze})
        torch.manual_seed(0)
        s = build_scorer(prep, variant="hybrid", dim=8).train()
        assert s.token_pre.shape == (30522, 384) and s.token_pre.requires_grad == (not freeze)
        s(torch.arange(5)).pow(2).mean().backward()
        assert (s.token_pre.grad is None) == freeze
        assert s.token_proj.weight.grad is not None and s.token_proj.weight.grad.abs().sum() > 0
        s.eval()
        baked = s.baked()
        assert not hasattr(baked, "token_pre") and baked.token_emb.weight.shape == (30522, 8)
        torch.testing.assert_close(baked(torch.arange(5)), s(torch.arange(5)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokenizer", ["word", "bpe", "pretrained"])
def test_train_export_and_fresh_process_give_identical_scores(tokenizer, tiny_files, tmp_path):
    from tests.conftest import compose_train
    import train
    out = str(tmp_path / "run")
    over = [f"data.train={tiny_files['train']}", f"data.test={tiny_files['test']}", f"data.items={tiny_files['items']}"]
    extra = ["data.tokens.vocab_size=200"] if tokenizer == "bpe" else []
    m = train.run(compose_train([*FAST, "data=csv", *over, f"tokenizer={tokenizer}", "model=hybrid", *extra], out))
    export = os.path.join(out, "export")
    assert os.path.exists(os.path.join(export, "tokenizer.json")) == (tokenizer != "word")
    cfg = json.load(open(os.path.join(export, "config.json")))
    assert cfg["tokenizer"]["kind"] == tokenizer
    # the fresh process may not reach any network; it needs no model package for the tokenizer
    code = f"""
import json, sys, torch, pandas as pd
from recsys import Recommender
rec = Recommender.from_pretrained({export!r})
test = pd.read_csv({os.path.join(out, 'split', 'test.csv')!r})
m, _ = rec.evaluate(test["user"], test["item"], ks=[10, 20])
torch.save(rec.scores(["u0", "u1", "u2"]), {os.path.join(out, 's.pt')!r})
print(json.dumps({{"ndcg": m["test/ndcg@10"], "tokens": rec.tokenizer.tokenize("movie 3 even drama", "title")}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["ndcg"] == pytest.approx(m["test/ndcg@10"], abs=1e-9)
    from recsys import Recommender
    rec = Recommender.from_pretrained(export)
    assert got["tokens"] == rec.tokenizer.tokenize("movie 3 even drama", "title") and got["tokens"]
    torch.testing.assert_close(torch.load(os.path.join(out, "s.pt")), rec.scores(["u0", "u1", "u2"]))
