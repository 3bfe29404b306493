import sys; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from common import *
import torch.nn.functional as F
torch.set_num_threads(2)
def tsp(m):
    m=m.tocsr(); return torch.sparse_csr_tensor(torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(), torch.from_numpy(m.data).float(), m.shape)
def run(tr, te, B, dim=200, drop=0.5, epochs=200, lr=1e-3, wd=0.0, bs=128, act="tanh", content=0.0, seed=0, every=20, twolayer=False, log=True):
    torch.manual_seed(seed)
    U, I = tr.shape; T = B.shape[1]
    Xd = torch.from_numpy(tr.toarray())
    Bt = tsp(B)
    Win = torch.nn.Parameter(torch.randn(I, dim)*0.01); Wout = torch.nn.Parameter(torch.randn(I, dim)*0.01); bo = torch.nn.Parameter(torch.zeros(I))
    E = torch.nn.Parameter(torch.randn(T, dim)*0.01); Eo = torch.nn.Parameter(torch.randn(T, dim)*0.01)
    params=[Win,Wout,bo]+([E,Eo] if content else [])
    opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    def item_in():
        return Win + (content*(Bt@E) if content else 0)
    def item_out():
        return Wout + (content*(Bt@Eo) if content else 0)
    def enc(x):
        x = F.normalize(x, dim=1)
        h = x @ item_in()
        return torch.tanh(h) if act=="tanh" else h
    best=(0,0)
    for ep in range(epochs):
        perm=torch.randperm(U)
        for s in range(0,U,bs):
            x = Xd[perm[s:s+bs]]
            xi = F.dropout(x, drop) if drop>0 else x
            logits = enc(xi) @ item_out().T + bo
            loss = -(F.log_softmax(logits,1)*x).sum(1).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        if (ep+1)%every==0:
            with torch.no_grad():
                S = (enc(Xd) @ item_out().T + bo).numpy()
            m = ndcg_recall(S, tr, te)
            if log: print(ep+1, round(float(loss),3), m, flush=True)
            if m[0]>best[0]: best=(m[0],ep+1)
    return best
if __name__=="__main__":
    import itertools, json
    tr, va, B, items = load(val=True)
    kw = json.loads(sys.argv[1]) if len(sys.argv)>1 else {}
    t=time.time(); print(kw, run(tr, va, B, **kw), time.time()-t)
