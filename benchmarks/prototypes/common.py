import numpy as np, pandas as pd, scipy.sparse as sp, torch, re, time
import os
D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "ml-latest-small-splits") + "/"
def load(split="random80", val=True, seed=0):
    tr = pd.read_csv(D+split+"/train.csv"); te = pd.read_csv(D+split+"/test.csv"); it = pd.read_csv(D+split+"/items.csv")
    items = pd.Index(sorted(set(it.item)|set(tr.item)|set(te.item))); users = pd.Index(sorted(set(tr.user)|set(te.user)))
    def csr(df): return sp.csr_matrix((np.ones(len(df),np.float32),(users.get_indexer(df.user),items.get_indexer(df.item))),shape=(len(users),len(items)))
    if val:
        rng=np.random.default_rng(seed); tr=tr.sample(frac=1,random_state=seed)
        tr["r"]=tr.groupby("user").cumcount(); n=tr.groupby("user").user.transform("size")
        v=tr[tr.r < (n*0.1).round().clip(lower=1)]; t=tr[~tr.index.isin(v.index)]
        train, test = csr(t), csr(v)
    else:
        train, test = csr(tr), csr(te)
    train.data[:]=1; test.data[:]=1; train.sum_duplicates(); test.sum_duplicates(); train.data[:]=1; test.data[:]=1
    # tokens
    text = it.set_index("item").text.reindex(items).fillna("")
    toks = [re.findall(r"[a-z0-9]+", s.lower()) for s in text]
    vocab = {}
    rows, cols = [], []
    for i, ts in enumerate(toks):
        for t in set(ts):
            rows.append(i); cols.append(vocab.setdefault(t, len(vocab)))
    B = sp.csr_matrix((np.ones(len(rows),np.float32),(rows,cols)),shape=(len(items),len(vocab)))
    df = np.asarray((B>0).sum(0)).ravel(); idf = np.log(len(items)/(1+df)).astype(np.float32)
    B = B.multiply(idf[None,:]).tocsr()
    nrm = np.sqrt(np.asarray(B.multiply(B).sum(1)).ravel()); nrm[nrm==0]=1
    B = sp.diags(1/nrm) @ B
    return train.tocsr(), test.tocsr(), B.tocsr().astype(np.float32), items
def ndcg_recall(scores, train, test, k=10, k2=20, items_mask=None):
    S = scores.copy(); S[train.nonzero()] = -np.inf
    users = np.where(np.diff(test.indptr)>0)[0]
    top = np.argpartition(-S[users], 20, axis=1)[:, :20]
    o = np.argsort(-np.take_along_axis(S[users], top, 1), 1); top = np.take_along_axis(top, o, 1)
    nd, rc = [], []
    disc = 1/np.log2(np.arange(2, k+2))
    for r, u in enumerate(users):
        t = set(test.indices[test.indptr[u]:test.indptr[u+1]])
        hits = np.array([x in t for x in top[r]])
        dcg = (hits[:k]*disc).sum(); idcg = disc[:min(len(t),k)].sum()
        nd.append(dcg/idcg); rc.append(hits[:k2].sum()/min(len(t),k2))
    return np.mean(nd), np.mean(rc)
def ease(train, lam):
    G = (train.T@train).toarray().astype(np.float64); G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G); B = -P/np.diag(P); B[np.diag_indices_from(B)] = 0
    return (train@B).astype(np.float32)
