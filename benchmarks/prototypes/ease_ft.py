"""EASE-initialised full-rank item-item weights fine-tuned with a multinomial (softmax) loss and
input dropout, Mult-DAE style, on the shared random80 split's validation carve-out: does a
ranking loss on EASE's capacity beat EASE's closed form? (benchmarks/README.md, "The learned
model against EASE: what was tried".)

    python benchmarks/prototypes/ease_ft.py '{"lam": 500, "lr": 3e-5, "epochs": 4, "tau": 40}'
"""
import json
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F401,F403
import torch.nn.functional as F
torch.set_num_threads(2)
kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
lam = kw.get("lam", 500); lr = kw.get("lr", 1e-4); drop = kw.get("drop", 0.5); reg = kw.get("reg", 0.0)
epochs = kw.get("epochs", 8); bs = kw.get("bs", 128); tau0 = kw.get("tau", 10.0); split = kw.get("split", "random80")
tr, va, _, items = load(split, val=kw.get("val", True))
X = torch.from_numpy(tr.toarray())
U, I = X.shape
G = (X.T.double() @ X.double()); G.diagonal().add_(lam)
P = torch.linalg.inv(G); W = -P / P.diagonal(); W.fill_diagonal_(0)
W = W.float(); W0 = W.clone()
print("EASE", ndcg_recall((X @ W).numpy(), tr, va), flush=True)
W = torch.nn.Parameter(W); tau = torch.nn.Parameter(torch.tensor(float(tau0)))
opt = torch.optim.Adam([W, tau], lr=lr)
diag = torch.arange(I)
torch.manual_seed(0)
for ep in range(epochs):
    t = time.time()
    perm = torch.randperm(U)
    for s in range(0, U, bs):
        x = X[perm[s:s + bs]]
        xi = x * (torch.rand_like(x) > drop) if drop > 0 else x
        logits = (xi @ W) * tau
        loss = -(F.log_softmax(logits, 1) * x).sum(1).mean()
        if reg:
            loss = loss + reg * ((W - W0) ** 2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            W[diag, diag] = 0
    with torch.no_grad():
        m = ndcg_recall((X @ W).numpy(), tr, va)
    print(ep + 1, round(float(loss), 3), round(float(tau.detach()), 2), m, f"{time.time() - t:.1f}s", flush=True)
