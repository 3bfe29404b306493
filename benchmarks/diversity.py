"""Diversity re-ranking trade-off (issue 17, item 3): NDCG@10 against intra-list diversity,
coverage and novelty, for a sweep of each re-ranker's strength (recsys/eval/rerank.py), on the
default protocol (configs/data/movielens.yaml: the embedded MovieLens, random 80/10/10 split,
seed 2026). One command:

    python benchmarks/diversity.py      # -> benchmarks/results/diversity.md (+ .json), docs/diversity.png

Models: EASE (lambda 200) and the EASE + content-KNN blend (model=blend), both fitted once on
the training part (the blend's first part is that EASE), then every setting only re-ranks.
Every setting is measured on validation (train masked) and on test (train + valid masked). The
test rows are a trade-off curve, nothing is chosen on them; the suggested strength of each
method is chosen on validation: the largest whose validation NDCG@10 is within 3% of the
model's own order.

Diversity is measured three ways on the same top-10 lists:
  ILD@10        the package's ild@10 (beyond.py): 1 - mean pairwise cosine of the items' TF-IDF
                vectors (title words, genres, tags);
  ILS@10        1 - ILD@10, the mean pairwise similarity (redundancy) of a list;
  genre ILD@10  the same on the items' genre sets (uniform weights, "genres:" tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STRENGTHS = {
    "mmr": [0.1, 0.2, 0.3, 0.4, 0.6, 0.8],           # lam = 1 - strength
    "calibration": [0.1, 0.2, 0.3, 0.4, 0.6, 0.8],   # lam = strength
    "popularity": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0],   # beta = strength
}
K = 10


def prepare(overrides: list[str]):
    """The default protocol's data and the blend spec, composed as `python train.py model=blend`."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=.", "model=blend", *overrides])
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "refit"}
    return hydra.utils.instantiate(data), hydra.utils.instantiate(cfg.model)


def measure_lists(model, users, target, seen, rerank, pool):
    """(mean NDCG@10, top-10 lists (N, 10)) of the (re-ranked) ranking."""
    from recsys.eval.evaluation import measure
    nd, lists = [], []
    for _, top, m in measure(model, users, target, seen, [K], 1024, rerank=rerank, pool=pool):
        nd.append(m[f"ndcg@{K}"])
        lists.append(top)
    return float(torch.cat(nd).double().mean()), torch.cat(lists)


def setting_metrics(model, part, rerank, pool, aux) -> dict:
    from recsys.eval.beyond import beyond_accuracy, intra_list_distance
    ndcg, L = measure_lists(model, aux["users"][part], aux["target"][part], aux["seen"][part], rerank, pool)
    b = beyond_accuracy(L, [K], aux["n_items"], aux["counts"], aux["n_users"], aux["unit"], prefix="")
    return {"ndcg": ndcg, "ild": b[f"ild@{K}"], "gild": float(intra_list_distance(L, aux["genre_unit"]).mean()),
            "coverage": b[f"coverage@{K}"], "novelty": b[f"novelty@{K}"]}


def sweep(name: str, model, aux, log) -> list[dict]:
    from recsys.eval import rerank as R
    rows = []
    settings = [(None, 0.0)] + [(m, s) for m, ss in STRENGTHS.items() for s in ss]
    for method, s in settings:
        row = {"model": name, "method": method or "none", "strength": s}
        for part in ("valid", "test"):
            t0 = time.perf_counter()
            rr, pool = R.build(method, s, k=K, bags=aux["bags"], counts=aux["counts"],
                               history=aux["seen"][part], genres=aux["genres"])
            row[part] = setting_metrics(model, part, rr, pool, aux)
            row[part]["seconds"] = time.perf_counter() - t0
        log(f"{name:6s} {row['method']:12s} {s:5g}  test NDCG@10 {row['test']['ndcg']:.4f} "
            f"ILD@10 {row['test']['ild']:.4f} genre ILD {row['test']['gild']:.4f} "
            f"coverage {row['test']['coverage']:.4f} novelty {row['test']['novelty']:.3f} "
            f"({row['test']['seconds']:.1f} s)")
        rows.append(row)
    return rows


def pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.1f}%"


def table(rows: list[dict]) -> list[str]:
    base = rows[0]["test"]
    out = ["| method | strength | NDCG@10 | ILD@10 | ILS@10 (1 - ILD) | genre ILD@10 | coverage@10 | novelty@10 |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        out.append(f"| {r['method']} | {r['strength']:g} | {t['ndcg']:.4f} ({pct(t['ndcg'], base['ndcg'])}) | "
                   f"{t['ild']:.4f} ({pct(t['ild'], base['ild'])}) | "
                   f"{1 - t['ild']:.4f} ({pct(1 - t['ild'], 1 - base['ild'])}) | "
                   f"{t['gild']:.4f} ({pct(t['gild'], base['gild'])}) | "
                   f"{t['coverage']:.4f} | {t['novelty']:.3f} |")
    return out


def chosen_on_validation(rows: list[dict], tol: float = 0.03) -> dict[str, dict]:
    """Per method, the largest strength whose validation NDCG@10 is >= (1 - tol) x the model's own."""
    base = rows[0]["valid"]["ndcg"]
    best = {}
    for r in rows[1:]:
        if r["valid"]["ndcg"] >= (1 - tol) * base:
            if r["method"] not in best or r["strength"] > best[r["method"]]["strength"]:
                best[r["method"]] = r
    return best


def bar_check(rows: list[dict]) -> list[str]:
    """Settings within 3% of the test NDCG@10 of the model's own order that change a diversity
    measure by 20% or more (ILD up, ILS down, genre ILD up)."""
    b = rows[0]["test"]
    ok = lambda r: r["test"]["ndcg"] >= 0.97 * b["ndcg"]
    lines = []
    for label, f in (("ILD@10 +20%", lambda t: t["ild"] >= 1.2 * b["ild"]),
                     ("ILS@10 -20%", lambda t: 1 - t["ild"] <= 0.8 * (1 - b["ild"])),
                     ("genre ILD@10 +20%", lambda t: t["gild"] >= 1.2 * b["gild"])):
        hits = [f"{r['method']} {r['strength']:g}" for r in rows[1:] if ok(r) and f(r["test"])]
        lines.append(f"- {label} for at most 3% NDCG@10: " + (", ".join(hits) if hits else "none"))
    return lines


def plot(results: dict[str, list[dict]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("ild", "ILD@10 (TF-IDF tokens)"), ("gild", "genre ILD@10"), ("coverage", "coverage@10"),
              ("novelty", "novelty@10 (bits)")]
    colors = {"mmr": "tab:blue", "calibration": "tab:green", "popularity": "tab:red"}
    styles = ["-", "--", ":"]
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 6.8))
    for ax, (key, label) in zip(axes.flat, panels):
        for (name, rows), ls in zip(results.items(), styles):
            base = rows[0]["test"]
            ax.scatter([base[key]], [base["ndcg"]], marker="*", s=110, color="black", zorder=3)
            for method, col in colors.items():
                pts = [base] + [r["test"] for r in rows if r["method"] == method]
                ax.plot([p[key] for p in pts], [p["ndcg"] for p in pts], ls, marker="o", ms=3, color=col,
                        label=f"{name}: {method}")
            ax.axhline(0.97 * base["ndcg"], color="grey", lw=0.6, ls=ls)
        top = max(rows[0]["test"]["ndcg"] for rows in results.values())
        low = min(rows[0]["test"]["ndcg"] for rows in results.values())
        ax.set_ylim(0.75 * low, 1.04 * top)                # the trade-off region; steeper points leave it
        ax.set_xlabel(label)
        ax.set_ylabel("test NDCG@10")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Diversity re-ranking on the default protocol (star: the model's own order; grey: -3% "
                 "NDCG@10; points below -25% NDCG@10 off the axes: see the table)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def study(overrides: list[str]):
    """(prep, the fitted EASE + content-KNN blend (.first = EASE), aux, fit seconds): the data
    and the per-item and per-part tables every setting is measured with (setting_metrics)."""
    from recsys.eval import rerank as R
    from recsys.eval.beyond import unit_rows
    from recsys.eval.evaluation import users_with_targets
    from recsys.train.build import eval_sets
    t0 = time.perf_counter()
    prep, spec = prepare(overrides)
    blend = spec.build(prep)                              # EASE (lambda 200) + content KNN; .first = EASE
    fit_s = time.perf_counter() - t0
    sets = eval_sets(prep)
    bags = R.item_bags(blend)
    genres, names = R.prefix_distribution(bags, prep.tokens, "genres:")
    aux = {"bags": bags, "genres": genres, "genre_names": names, "n_items": prep.n_items, "n_users": prep.n_users,
           "counts": torch.bincount(torch.from_numpy(prep.train[:, 1]), minlength=prep.n_items),
           "unit": unit_rows(*bags, len(prep.tokens)),
           "genre_unit": torch.nn.functional.normalize(genres, dim=1).to_sparse_csr(),
           "seen": {"valid": sets["val_seen"], "test": sets["test_seen"]},
           "target": {"valid": sets["val_target"], "test": sets["test_target"]}}
    aux["users"] = {p: users_with_targets(t[0]) for p, t in aux["target"].items()}
    return prep, blend, aux, fit_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["ease", "blend"], choices=["ease", "blend"])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "diversity.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "diversity.png"))
    ap.add_argument("--extra", nargs="*", default=[], help="Hydra overrides of the train config")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    from recsys.eval import rerank as R
    t0 = time.perf_counter()
    prep, blend, aux, fit_s = study(a.extra)
    names = aux["genre_names"]
    models = {"ease": blend.first, "blend": blend}
    results = {m: sweep(m, models[m], aux, lambda s: print(s, flush=True)) for m in a.models}

    cmd = "python benchmarks/diversity.py" + (" --models " + " ".join(a.models) if a.models != ["ease", "blend"] else "")
    md = [f"# Diversity re-ranking trade-off", "",
          f"`{cmd}` ({time.perf_counter() - t0:.0f} s, of which {fit_s:.0f} s data + fit; "
          f"{platform.machine()}, {torch.get_num_threads()} threads). Default protocol "
          f"(configs/data/movielens.yaml), test part, {len(aux['users']['test'])} users; pool "
          f"{R.default_pool(K)} candidates re-ranked per user. Strength: mmr lam = 1 - strength, "
          f"calibration lam = strength, popularity beta = strength; percentages against the model's own "
          f"order (strength 0). Genre tokens: {', '.join(n.split(':', 1)[1] for n in names)}.", ""]
    for m, rows in results.items():
        md += [f"## {'EASE (lambda 200)' if m == 'ease' else 'blend EASE + content KNN (model=blend)'}", ""]
        md += table(rows) + [""]
        md += ["Chosen on validation (largest strength within 3% of the validation NDCG@10), its test values:", ""]
        for method, r in chosen_on_validation(rows).items():
            t, b = r["test"], rows[0]["test"]
            md.append(f"- {method} {r['strength']:g}: NDCG@10 {pct(t['ndcg'], b['ndcg'])}, ILD@10 "
                      f"{pct(t['ild'], b['ild'])}, ILS@10 {pct(1 - t['ild'], 1 - b['ild'])}, genre ILD@10 "
                      f"{pct(t['gild'], b['gild'])}, coverage@10 {pct(t['coverage'], b['coverage'])}, "
                      f"novelty@10 {pct(t['novelty'], b['novelty'])}")
        md += ["", "The bar (at least 20% more diversity for at most 3% NDCG@10), on test:", ""] + bar_check(rows) + [""]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"machine": platform.platform(), "k": K, "pool": R.default_pool(K), "results": results}, f, indent=1)
    plot(results, a.plot)
    print("\n".join(md))


if __name__ == "__main__":
    main()
