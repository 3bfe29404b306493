"""Recompute full-ranking test metrics from an export, without retraining.

    python evaluate.py run_dir=outputs/2026-11-28/10-00-00
    python evaluate.py export=path/to/export test=test.csv [user_col=user item_col=item]
    python evaluate.py compare=[RUN_A,RUN_B]     (paired per-user differences, bootstrap CI, p-value)
    python evaluate.py run_dir=RUN diversity.method=mmr diversity.strength=0.3   (re-ranked lists)
"""
from __future__ import annotations

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from recsys import Recommender
from recsys.data.ids import conform_ids
from recsys.data.io import DataError
from recsys.data.prepare import read_interactions
from recsys.eval.evaluation import format_table
from recsys.data.files import write_json_atomic

log = logging.getLogger("evaluate")


def run(cfg: DictConfig) -> dict:
    if cfg.get("compare"):
        return compare(cfg)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rec = Recommender.from_pretrained(cfg.export, device=device)
    # ids as at training (the id rule, recsys/data/ids.py): "1" is the integer 1 only when the
    # model's ids are integers, so a run with ids "1".."60" plus "bob" reads back its own split
    df = read_interactions(cfg.test, cfg.user_col, cfg.item_col, rating_col=None, time_col=None,
                           raw_ids=True, what="test", arg="test")
    users = conform_ids(df["user"], f"{cfg.test}, column {cfg.user_col!r}", rec.users.ids)
    items = conform_ids(df["item"], f"{cfg.test}, column {cfg.item_col!r}", rec.items.ids)
    # diversity re-ranking (off unless diversity.method is set): the metrics of the re-ranked
    # lists; popularity and the users' genre mix come from the export's training histories
    div = OmegaConf.to_container(cfg.diversity) if cfg.get("diversity") is not None else None
    metrics, report = rec.evaluate(users, items, ks=list(cfg.ks), chunk_size=cfg.chunk, diversity=div)
    log.info("test pairs: %s", report)
    if report["pairs_used"] == 0:
        raise DataError(f"{cfg.test}: none of its {report['pairs_given']} (user, item) pairs can be "
                        f"evaluated ({report['dropped_unknown_user']} unknown users, "
                        f"{report['dropped_unknown_item']} unknown items, {report['dropped_seen']} "
                        f"seen in training)")
    print(format_table(metrics))
    if cfg.out:
        write_json_atomic(cfg.out, {**metrics, "report": report})
    return metrics


def compare(cfg: DictConfig) -> dict:
    from recsys.eval.compare import compare_runs, format_comparison
    runs = list(cfg.compare)
    if len(runs) != 2:
        raise DataError(f"compare= needs exactly two run folders, got {len(runs)}: {runs}")
    table, info = compare_runs(runs[0], runs[1], int(cfg.bootstrap), int(cfg.seed))
    print(format_comparison(table, info, runs[0], runs[1]))
    out = {"runs": runs, **info, "metrics": table.to_dict(orient="records")}
    if cfg.out:
        write_json_atomic(cfg.out, out)
    return out


# hydra.run.dir: the run folder's .evaluate/, or ./.evaluate/ when no run_dir is given
# (oc.select keeps a null value, which made a folder named "None")
OmegaConf.register_new_resolver("or_here", lambda v: "." if v is None else v, replace=True)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ValueError, KeyError, OSError) as e:    # bad input: the package's one-line message
        log.error("%s: %s", type(e).__name__, " ".join(str(e).split()))
        sys.exit(1)


if __name__ == "__main__":
    main()
