"""RecVAE (Shenbin et al. 2020) on the shared split's validation carve-out, to see whether it
reaches EASE where Mult-DAE did not (dae.py): a 5-layer densely connected encoder (swish,
layer norm) of the L2-normalised, dropped-out history, a linear decoder with a full softmax,
the composite prior (standard normal, the previous epoch's posterior, a wide normal), the KL
weight gamma x |history|, and alternating updates (encoder n_enc passes, then decoder n_dec).
Defaults are the paper's code's (hidden 600, latent 200, batch 500, lr 5e-4, gamma 0.005).

    python benchmarks/prototypes/recvae.py '{"epochs": 50}'
"""
import sys; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from common import *  # noqa: E401,E702,F403
import copy
import json

import torch.nn.functional as F
from torch import nn

torch.set_num_threads(2)
LOG2PI = float(np.log(2 * np.pi))


def log_norm_pdf(x, mu, logvar):
    return -0.5 * (logvar + LOG2PI + (x - mu).pow(2) / logvar.exp())


class Encoder(nn.Module):
    def __init__(self, n_items, hidden, latent, eps=0.1):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(n_items, hidden)] + [nn.Linear(hidden, hidden) for _ in range(4)])
        self.ln = nn.ModuleList([nn.LayerNorm(hidden, eps=eps) for _ in range(5)])
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)

    def forward(self, x, drop):                          # x (B, I) -> mu, logvar (B, L)
        x = F.dropout(F.normalize(x, dim=1), drop, self.training)
        hs = []
        for fc, ln in zip(self.fc, self.ln):
            h = fc(x if not hs else hs[-1])
            h = ln(F.silu(h + sum(hs)) if hs else F.silu(h))
            hs.append(h)
        return self.mu(hs[-1]), self.logvar(hs[-1])


class RecVAE(nn.Module):
    def __init__(self, n_items, hidden=600, latent=200, weights=(3 / 20, 3 / 4, 1 / 10)):
        super().__init__()
        self.encoder = Encoder(n_items, hidden, latent)
        self.old = Encoder(n_items, hidden, latent).requires_grad_(False)
        self.decoder = nn.Linear(latent, n_items)
        self.logw = torch.log(torch.tensor(weights))

    def prior(self, x, z):
        pm, pl = self.old(x, 0.0)
        zero = torch.zeros_like(z)
        g = torch.stack([log_norm_pdf(z, zero, zero), log_norm_pdf(z, pm, pl), log_norm_pdf(z, zero, zero + 10)], -1)
        return torch.logsumexp(g + self.logw, -1)

    def loss(self, x, gamma, drop):
        mu, logvar = self.encoder(x, drop)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        mll = (F.log_softmax(self.decoder(z), -1) * x).sum(-1).mean()
        kld = ((log_norm_pdf(z, mu, logvar) - self.prior(x, z)).sum(-1) * gamma * x.sum(-1)).mean()
        return kld - mll

    @torch.no_grad()
    def scores(self, x):
        self.eval()
        s = self.decoder(self.encoder(x, 0.0)[0])
        self.train()
        return s


def run(tr, te, epochs=50, hidden=600, latent=200, bs=500, lr=5e-4, gamma=0.005, n_enc=3, n_dec=1, drop=0.5,
        seed=0, every=1, log=True):
    torch.manual_seed(seed)
    X = torch.from_numpy(tr.toarray())
    m = RecVAE(X.shape[1], hidden, latent)
    oe, od = torch.optim.Adam(m.encoder.parameters(), lr=lr), torch.optim.Adam(m.decoder.parameters(), lr=lr)
    best, t0 = (0.0, 0, 0.0), time.time()
    for ep in range(epochs):
        for opt, passes, d in ((oe, n_enc, drop), (od, n_dec, 0.0)):
            for _ in range(passes):
                for i in torch.randperm(len(X)).split(bs):
                    loss = m.loss(X[i], gamma, d)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            if opt is oe:
                m.old.load_state_dict(copy.deepcopy(m.encoder.state_dict()))
        if (ep + 1) % every == 0:
            nd, rc = ndcg_recall(m.scores(X).numpy(), tr, te)
            if log:
                print(ep + 1, round(float(loss), 2), round(nd, 4), round(rc, 4), f"{time.time() - t0:.0f}s", flush=True)
            if nd > best[0]:
                best = (round(nd, 4), ep + 1, round(rc, 4))
    return best


if __name__ == "__main__":
    tr, va, B, items = load(val=True)
    kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    t = time.time()
    print(kw, "best (ndcg@10, epoch, recall@20):", run(tr, va, **kw), f"{time.time() - t:.0f}s")
