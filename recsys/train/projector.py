"""Item embeddings in TensorBoard's Projector, with metadata to colour and search by.

    <log dir>/projector_config.pbtxt          tensor_name "items/collaborative", ...
    <log dir>/items_collaborative/tensors.tsv (n_items, dim)
    <log dir>/items_collaborative/metadata.tsv title, genres, genre, popularity, status

Columns (item_columns): the title; per prefixed text field (genres) all its tokens and the
rarest one (one value per item, so points can be coloured by it); the popularity bucket of the
item's training interactions; cold (no training interaction) or warm.
"""
from __future__ import annotations

import os

import numpy as np

POPULARITY = ((0, "0"), (4, "1-4"), (19, "5-19"), (99, "20-99"))    # upper bounds; above: "100+"


def popularity_bucket(count: int) -> str:
    for hi, label in POPULARITY:
        if count <= hi:
            return label
    return f"{POPULARITY[-1][0] + 1}+"


def item_columns(prep) -> dict[str, list[str]]:
    """{column: one string per item} for the metadata of prep's items (data/prepare.Prepared)."""
    n = prep.n_items
    cols = {"title": [_clean(t) or "(untitled)" for t in prep.item_titles]}
    tokens = [str(t) for t in prep.tokens.ids]
    indptr, indices = np.asarray(prep.bags.indptr), np.asarray(prep.bags.indices)
    df = np.bincount(indices, minlength=len(tokens))                  # items per token
    for field in prep.text_fields[1:]:
        pre = f"{field}:"
        own = np.array([t.startswith(pre) for t in tokens], dtype=bool)
        if not own.any():
            continue
        every, one = [], []
        for i in range(n):
            toks = [int(t) for t in indices[indptr[i]:indptr[i + 1]] if own[t]]
            every.append(" ".join(tokens[t][len(pre):] for t in toks))
            one.append(tokens[min(toks, key=lambda t: (df[t], t))][len(pre):] if toks else "(none)")
        cols[field], cols[field.rstrip("s") if field.endswith("s") else f"{field}_rarest"] = every, one
    counts = np.bincount(prep.train[:, 1], minlength=n)
    cols["popularity"] = [popularity_bucket(int(c)) for c in counts]
    cols["status"] = ["warm" if c > 0 else "cold" for c in counts]
    return cols


def _clean(s) -> str:
    return " ".join(str(s).replace("\t", " ").split())


def write_projector(log_dir: str, tables: dict, columns: dict[str, list[str]]) -> None:
    """tables {"items/collaborative": (n_items, dim) tensor}, each with the same metadata, in
    log_dir's projector_config.pbtxt (plain tensor names, one folder per table)."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
    config = ProjectorConfig()
    names = list(columns)
    for tag, mat in tables.items():
        folder = tag.replace("/", "_")
        os.makedirs(os.path.join(log_dir, folder), exist_ok=True)
        mat = np.asarray(mat.detach().cpu().float().numpy() if hasattr(mat, "detach") else mat, dtype=np.float32)
        np.savetxt(os.path.join(log_dir, folder, "tensors.tsv"), mat, delimiter="\t", fmt="%.5g")
        with open(os.path.join(log_dir, folder, "metadata.tsv"), "w", encoding="utf-8") as f:
            f.write("\t".join(names) + "\n")
            for row in zip(*(columns[c] for c in names)):
                f.write("\t".join(_clean(v) for v in row) + "\n")
        config.embeddings.add(tensor_name=tag, tensor_path=f"{folder}/tensors.tsv",
                              metadata_path=f"{folder}/metadata.tsv", tensor_shape=list(mat.shape))
    if tables:
        with open(os.path.join(log_dir, "projector_config.pbtxt"), "w") as f:
            f.write(text_format.MessageToString(config))
