"""token autoencoder prototype: items are bags of (id token + content tokens), users are pooled history."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from common import *
import torch.nn.functional as F
torch.set_num_threads(1)
def tsp(m):
    m=m.tocsr(); return torch.sparse_csr_tensor(torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(), torch.from_numpy(m.data).float(), m.shape)
def run(tr, te, B, mode="add", dim=256, drop=0.5, idrop=0.0, epochs=60, lr=3e-3, wd=0.0, bs=64, act="linear", cw=1.0, seed=0, every=10, log=True, cold=None, ret=False):
    import warnings; warnings.filterwarnings("ignore")
    torch.manual_seed(seed)
    U, I = tr.shape; T = B.shape[1]
    Xd = torch.from_numpy(tr.toarray())
    Bt = tsp(B)
    warm = torch.from_numpy(np.asarray(tr.sum(0)).ravel()>0)
    P = lambda *s: torch.nn.Parameter(torch.randn(*s)*0.01)
    Ain, Aout, Ein, Eout = P(I,dim), P(I,dim), P(T,dim), P(T,dim)
    bt = torch.nn.Parameter(torch.zeros(T)); bi = torch.nn.Parameter(torch.zeros(I))
    opt = torch.optim.Adam([Ain,Aout,Ein,Eout,bt,bi], lr=lr, weight_decay=wd)
    def tables(mask):
        cin = Bt@Ein; cout = Bt@Eout; cb = Bt@bt[:,None]
        m = mask[:,None].float()
        if mode=="switch":
            return m*Ain + cw*cin, m*Aout + (1-m)*cout, m[:,0]*bi + (1-m[:,0])*cb[:,0]
        if mode=="both":
            return m*Ain + cw*cin, m*(Aout+cout) + (1-m)*cout*2, m[:,0]*bi + cb[:,0]
        return m*Ain + cw*cin, m*Aout + cw*cout, m[:,0]*bi + cw*cb[:,0]
    def enc(x, tin):
        h = F.normalize(x, dim=1) @ tin
        return torch.tanh(h) if act=="tanh" else h
    best=(0,0,None)
    for ep in range(epochs):
        perm=torch.randperm(U)
        for s in range(0,U,bs):
            x = Xd[perm[s:s+bs]]
            mask = warm & (torch.rand(I) >= idrop)
            tin, tout, b = tables(mask)
            xi = F.dropout(x, drop) if drop>0 else x
            logits = enc(xi, tin) @ tout.T + b
            loss = -(F.log_softmax(logits,1)*x).sum(1).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        if (ep+1)%every==0:
            with torch.no_grad():
                tin, tout, b = tables(warm)
                S = (enc(Xd, tin) @ tout.T + b).numpy()
            m = ndcg_recall(S, tr, te)
            c = cold_recall(S, tr, te, cold) if cold is not None else None
            if log: print(ep+1, round(float(loss),3), m, c, flush=True)
            if m[0]>best[0]: best=(m[0],ep+1,c)
    return (best, S) if ret else best
def cold_recall(S, tr, te, cold, k=20):
    S = S.copy(); S[tr.nonzero()] = -np.inf
    top = np.argpartition(-S, k, axis=1)[:, :k]
    r=[]
    for u in range(tr.shape[0]):
        t = set(te.indices[te.indptr[u]:te.indptr[u+1]]) & cold
        if not t: continue
        r.append(len(t & set(top[u]))/min(len(t),k))
    return np.mean(r)
if __name__=="__main__":
    import json
    kw = json.loads(sys.argv[1]) if len(sys.argv)>1 else {}
    split = kw.pop("split","random80"); val = kw.pop("val", True)
    tr, te, B, items = load(split, val=val)
    cold=None
    if split=="colditems" and not val:
        cold = set(items.get_indexer(pd.read_csv(D+"colditems/cold_items.csv").iloc[:,0]))
    t=time.time(); print(kw, run(tr, te, B, cold=cold, **kw), time.time()-t, flush=True)
