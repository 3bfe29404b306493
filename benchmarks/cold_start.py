"""Cold items and new users, side by side with LightFM in one run.

    python benchmarks/cold_start.py                    # both protocols, memory-based models + LightFM
    python benchmarks/cold_start.py --learned          # ... and the learned ones, each tokenizer (~25 min)
    python benchmarks/cold_start.py --part cold --only "EASE|LightFM WARP + tokens"

cold   the shared fixed split ../shared/data/ml-latest-small-splits/colditems (experiment=
       colditems_shared): 10% of the movies with >= 5 ratings have all their ratings in test.
       Cold-item Recall@20 = Recall@20 with each user's targets restricted to the cold movies,
       every item of the catalog ranked, train items masked (docs/metrics.md). NDCG@10 over
       all test targets (warm and cold) shows what a configuration costs the warm ranking.
new    the new-user protocol on the embedded MovieLens (experiment=newusers): 10% of the users
       never reach training; each is scored from half of their ratings at inference, measured
       on the other half (NDCG@10).

Our models run through `train.py` (one run folder each, under outputs/cold_start/); LightFM
(optional benchmark dependency `lightfm-next`) is fitted in this process on the very same
prepared data (recsys.data.prepare, the same validation carve-out, the same item tokens as features) and
ranked by recsys's own evaluation code (benchmarks/peers/lightfm_scorer.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.quality import run  # noqa: E402

NO_VALID = ["data.valid_ratio=0"]      # memory models need no validation (cold protocol, csv data)
TOKENIZERS = ("word", "bpe", "pretrained")


def cold_variants(learned: bool) -> dict[str, list[str]]:
    v = {f"content KNN, {t}": ["model=content_knn", f"tokenizer={t}", *NO_VALID] for t in TOKENIZERS}
    v.update({
        "EASE": ["model=ease", *NO_VALID],
        "EASE, cold fill k 20": ["model=ease", "model.cold_k=20", *NO_VALID],
        "blend EASE + content KNN (model=blend, no fill)": ["model=blend", *NO_VALID],
        "blend EASE + content KNN, fill k 20 (model=blend_cold)": ["model=blend_cold", *NO_VALID],
        "blend EASE + content KNN, fill k 20 x 1.5": ["model=blend_cold", "model.first.cold_scale=1.5", *NO_VALID],
        "blend EASE + content KNN, fill k 10 x 1.5": ["model=blend_cold", "model.first.cold_k=10",
                                                      "model.first.cold_scale=1.5", *NO_VALID],
    })
    if learned:
        for t in TOKENIZERS:
            v[f"learned content, {t}"] = ["model=content", f"tokenizer={t}"]
            v[f"learned hybrid, {t}"] = ["model=hybrid", f"tokenizer={t}"]
        v["learned hybrid, word, cold fill k 20"] = ["model=hybrid", "model.cold_k=20"]
        v["learned hybrid, word, cold fill k 10 x 1.5"] = ["model=hybrid", "model.cold_k=10", "model.cold_scale=1.5"]
        v["learned hybrid, pretrained, cold fill k 20"] = ["model=hybrid", "tokenizer=pretrained", "model.cold_k=20"]
    return v


def new_variants(learned: bool) -> dict[str, list[str]]:
    v = {f"content KNN, {t}": ["model=content_knn", f"tokenizer={t}"] for t in TOKENIZERS}
    v.update({"most popular": ["model=popularity"], "ItemKNN": ["model=itemknn"], "EASE": ["model=ease"],
              "blend EASE + content KNN": ["model=blend"]})
    if learned:
        for t in TOKENIZERS:
            v[f"learned content, {t}"] = ["model=content", f"tokenizer={t}"]
            v[f"learned hybrid, {t}"] = ["model=hybrid", f"tokenizer={t}"]
        v["learned MF, fold-in (lambda on validation)"] = ["model=collaborative"]
    return v


LIGHTFM = {   # name: (item tokens as features, cold items as columns of the fit)
    "LightFM WARP + tokens, cold items not in the fit": (True, False),
    "LightFM WARP + tokens": (True, True),
    "LightFM WARP": (False, True),
}
REF = "LightFM WARP + tokens, cold items not in the fit"   # the stronger LightFM on cold items


def lightfm_rows(part: str, use_tokens: bool, cold_columns: bool = True) -> dict:
    """LightFM fitted here on the data train.py would prepare for the same protocol."""
    from benchmarks.peers.lightfm_scorer import fit_lightfm
    from recsys.train.build import eval_sets, new_user_sets, report_context
    from recsys.data.prepare import prepare_files, prepare_movielens
    from recsys.eval.evaluation import evaluate
    t0 = time.perf_counter()
    if part == "cold":
        s = os.path.join(ROOT, "..", "shared", "data", "ml-latest-small-splits", "colditems")
        prep = prepare_files(train=f"{s}/train.csv", test=f"{s}/test.csv", items=f"{s}/items.csv", valid_ratio=0.1,
                             seed=2026, tokens={"kind": "word", "min_count": 2, "prefix_fields": []})
    else:
        prep = prepare_movielens(os.path.join(ROOT, "data", "ml-latest-small"),
                                 split={"kind": "newusers", "new": 0.1, "given": 0.5, "valid": 0.1, "test": 0.1,
                                        "seed": 2026},
                                 tokens={"kind": "word", "min_count": 2, "prefix_fields": ["genres"]})
    scorer = fit_lightfm(prep, use_tokens=use_tokens, cold_columns=cold_columns)
    sets = eval_sets(prep)
    ctx = report_context(prep)
    m, _ = evaluate(scorer, sets["test_target"], sets["test_seen"], (10, 20), context={"item_cold": ctx["item_cold"]})
    if part == "new":
        new = new_user_sets(prep)
        more, _ = evaluate(scorer, new["target"], new["given"], (10, 20), prefix="test/new_users/",
                           histories=new["given"])
        m.update(more)
    m["wall_s"] = time.perf_counter() - t0
    m["cmd"] = f"benchmarks/peers/lightfm_scorer.py fit_lightfm(use_tokens={use_tokens}, cold_columns={cold_columns})"
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("cold", "new", "both"), default="both")
    ap.add_argument("--learned", action="store_true", help="also train the learned variants (each tokenizer)")
    ap.add_argument("--only", help="subset of variant names, separated by |")
    ap.add_argument("--out", default=os.path.join(ROOT, "outputs", "cold_start"))
    a = ap.parse_args()
    keep = set(a.only.split("|")) if a.only else None
    for part in (("cold", "new") if a.part == "both" else (a.part,)):
        exp = ["experiment=colditems_shared"] if part == "cold" else ["experiment=newusers"]
        variants = cold_variants(a.learned) if part == "cold" else new_variants(a.learned)
        rows = {}
        for name, (use, cols) in LIGHTFM.items():
            if part == "new" and not cols:
                continue                                  # no cold items in the new-user protocol
            if keep is None or name in keep:
                try:
                    rows[name] = lightfm_rows(part, use, cols)
                except ImportError as e:
                    rows[name] = {"error": f"not installed ({e})"}
        for name, ov in variants.items():
            if keep is None or name in keep:
                rows[name] = run(name, ov, exp, a.out)
        ref = rows.get(REF if part == "cold" else "LightFM WARP + tokens", {})
        if part == "cold":
            print("\n### Cold items (shared colditems split)\n")
            print(f"| model | NDCG@10 (all targets) | cold-item Recall@20 | x {REF} | wall s | command |")
            print("|---|---|---|---|---|---|")
            key = "test/cold_items/recall@20"
        else:
            print("\n### New users (newusers protocol, embedded MovieLens)\n")
            print("| model | new-user NDCG@10 | new-user Recall@20 | x LightFM + tokens | wall s | command |")
            print("|---|---|---|---|---|---|")
            key = "test/new_users/ndcg@10"
        for name, m in rows.items():
            if "error" in m:
                print(f"| {name} | — | — | — | — | {m['error']} |")
                continue
            first = m["test/ndcg@10"] if part == "cold" else m.get("test/new_users/ndcg@10", float("nan"))
            second = m.get(key, float("nan")) if part == "cold" else m.get("test/new_users/recall@20", float("nan"))
            base = ref.get(key)
            ratio = f"{m.get(key, float('nan')) / base:.1f}x" if base else "—"
            print(f"| {name} | {first:.4f} | {second:.4f} | {ratio} | {m['wall_s']:.0f} | `{m['cmd']}` |", flush=True)


if __name__ == "__main__":
    main()
