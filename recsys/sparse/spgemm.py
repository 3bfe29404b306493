"""Sparse x sparse products A @ B^T written into dense row blocks, the kernel under the KNN
models (similarities, and scores = histories @ neighbours^T).

Both operands are sparse CSR with the same columns: A (b, C), B (R, C); the result is the dense
(b, R) block A @ B^T. The columns are split in two:

* light columns go through a gather + scatter-add kernel: every scalar product a[r, c] b[s, c]
  is formed once and added into the output, so the work is the number of co-occurring entries
  (as in implicit and every sparse library), about 5 ns a product on a CPU core. B's light
  columns are kept as padded lists grouped by length (`RightOperand._pad`), so an entry of A
  fetches its column's whole list in one contiguous copy;
* heavy columns (a power-law item watched by half the users, a user who rated 5,000 films) are
  gathered into small dense matrices and go through one GEMM, whose cost is b x R x n_heavy
  multiply-adds at a few hundred times the rate of the sparse kernel (50-120 GMAC/s on 2 CPU
  cores here). A column c is heavy when its share of
  sparse work, nnz_A(c) x nnz_B(c), exceeds the dense cost R_A x R_B divided by `dense_ratio`.
  On a power-law dataset a few hundred heavy columns carry most of the work.

Memory: B's light part as padded lists, at most PAD_RATIO x nnz x 12 bytes; the dense heavy part
of B, R x n_heavy x 4 bytes (n_heavy capped by `max_heavy`); per block, the output (b, R) and
max_products x 12 bytes of materialised (padded) products (the caller cuts blocks to hold at
most max_products). Scratch buffers are reused from block to block: on a CPU
a fresh large allocation is paid in page faults that cost more than the arithmetic.

(torch.sparse.mm on two CSR tensors leaks its output buffers in torch 2.13 on the CPU, about
46 MB a call, and is slower than this kernel, hence our own.)
"""
from __future__ import annotations

import torch

from recsys.sparse.csr import row_ids, transpose_entries

DENSE_RATIO = 400.0   # cost of one sparse scalar product / one GEMM multiply-add, measured on a CPU core
DENSE_FIXED = 16.0    # the GEMM's pass over the (b, R) output, in heavy columns' worth of work
PAD_RATIO = 1.5       # light lists are padded to the longest of their group: lengths within 1.5x


def heavy_columns(nnz_a: torch.Tensor, nnz_b: torch.Tensor, rows_a: int, rows_b: int,
                  dense_ratio: float = DENSE_RATIO, max_heavy: int = 2048) -> torch.Tensor:
    """Indices of the columns cheaper as one dense GEMM than as scalar products (at most
    max_heavy, the most expensive), or none when the few there are do not pay for the GEMM's pass
    over the output. nnz_a, nnz_b: (C,) entries per column over all rows of A and B."""
    work = nnz_a.double() * nnz_b.double()                            # (C,) sparse products
    per_column = float(rows_a) * float(rows_b) / max(dense_ratio, 1e-30)   # dense cost of one column
    heavy = torch.nonzero(work > per_column).flatten()
    if len(heavy) > max_heavy:
        heavy = heavy[torch.topk(work[heavy], max_heavy).indices]
    # the GEMM also passes over the whole output once: worth it only if enough work moves
    if float(work[heavy].sum()) <= per_column * (len(heavy) + DENSE_FIXED):
        return heavy[:0]
    return heavy


def column_counts(X: torch.Tensor) -> torch.Tensor:
    """(C,) number of entries per column of a sparse CSR matrix."""
    return torch.bincount(X.col_indices(), minlength=X.shape[1])


class Workspace:
    """Scratch vectors reused from call to call (one per thread: not shareable)."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype, device) -> torch.Tensor:
        """At least n elements named `name` (contents undefined), grown by 25% when too small."""
        buf = self._bufs.get(name)
        if buf is None or len(buf) < n or buf.dtype != dtype or buf.device != torch.device(device):
            grow = int(1.25 * len(buf)) if buf is not None else 0
            buf = torch.empty(max(n, grow), dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:n]

    def matrix(self, name: str, rows: int, cols: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
        return self.get(name, rows * cols, dtype, device).view(rows, cols)


def slice_rows(X: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows r0:r1 of a sparse CSR matrix, still sparse CSR (views, no copy)."""
    crow = X.crow_indices()
    a, b = int(crow[r0]), int(crow[r1])
    return torch.sparse_csr_tensor(crow[r0:r1 + 1] - a, X.col_indices()[a:b], X.values()[a:b], (r1 - r0, X.shape[1]))


def cut_rows(products: list[float], max_rows: int, max_products: float) -> list[tuple[int, int]]:
    """Consecutive row ranges of at most max_rows rows and max_products products each (a single
    heavier row gets a range of its own)."""
    out, start, acc = [], 0, 0.0
    for r, f in enumerate(products):
        if r > start and (r - start >= max_rows or acc + f > max_products):
            out.append((start, r))
            start, acc = r, 0.0
        acc += f
    if start < len(products):
        out.append((start, len(products)))
    return out


def for_blocks(blocks: list[tuple[int, int]], work, workers: int | None, device, ws: Workspace | None = None) -> list:
    """[work(r0, r1, ws) for each row range], in order; on the CPU spread over `workers` threads
    (default: torch's thread count), each with its own Workspace; one thread elsewhere (ws, or a
    fresh one). The scatter-add under the sparse products runs on one core whatever torch's
    thread count, so the workers are the parallelism: torch's own intra-op threads, which would
    oversubscribe the cores (the heavy GEMM, a top-k), are set to one meanwhile. Blocks are
    handed out one at a time: no worker waits on another's share."""
    if workers is None:
        workers = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    workers = max(1, min(int(workers), len(blocks)))
    if workers == 1:
        ws = ws if ws is not None else Workspace()
        return [work(r0, r1, ws) for r0, r1 in blocks]
    import threading
    from concurrent.futures import ThreadPoolExecutor
    local = threading.local()

    def run(r0: int, r1: int):
        if getattr(local, "ws", None) is None:
            local.ws = Workspace()                     # scratch reused by each worker's blocks
        return work(r0, r1, local.ws)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(run, *zip(*blocks)))
    finally:
        torch.set_num_threads(threads)


class RightOperand:
    """B (R, C) prepared for many products A_block @ B^T: its light columns as padded lists of
    rows grouped by length (`_pad`), its heavy columns as a dense (R, n_heavy) matrix."""

    def __init__(self, B: torch.Tensor, heavy: torch.Tensor | None = None, transposed: torch.Tensor | None = None):
        """transposed: B^T (C, R) as CSR when the caller has it (EASE's Gram: B = X^T, B^T = X),
        which spares sorting B's entries by column."""
        R, C = B.shape
        dev = B.values().device
        self.R, self.C = R, C
        self.heavy = heavy if heavy is not None else torch.zeros(0, dtype=torch.long, device=dev)
        self.heavy_pos = torch.full((C,), -1, dtype=torch.long, device=dev)          # (C,)
        self.heavy_pos[self.heavy] = torch.arange(len(self.heavy), device=dev)
        crow, col, val = B.crow_indices(), B.col_indices(), B.values()
        row = row_ids(crow)
        is_h = self.heavy_pos[col] >= 0
        self.dense = torch.zeros(R, len(self.heavy), dtype=val.dtype, device=dev)     # (R, n_heavy)
        self.dense[row[is_h], self.heavy_pos[col[is_h]]] = val[is_h]
        light = ~is_h
        # transpose of the light part: CSR (C, R), rows = columns of B
        lc, lr, lv = col[light], row[light], val[light]
        if transposed is None:
            self._pad(*transpose_entries(lr, lc, lv, C))                              # kept padded only
        else:                                   # B^T's rows, the heavy ones emptied
            tc = transposed.crow_indices()
            keep = self.heavy_pos[row_ids(tc)] < 0
            lens = torch.diff(tc)
            lens[self.heavy] = 0
            t_crow = torch.zeros(C + 1, dtype=torch.long, device=dev)
            t_crow[1:] = torch.cumsum(lens, 0)
            self._pad(t_crow, transposed.col_indices()[keep], transposed.values()[keep])
        # B's light part in its own row order, for products where B (or a matrix with the same
        # support) is also the left operand: no per-call split of A needed
        self.light = torch.sparse_csr_tensor(
            torch.cat([crow.new_zeros(1), torch.cumsum(torch.bincount(lr, minlength=R), 0)]), lc, lv, (R, C))

    def light_products(self, A: torch.Tensor) -> torch.Tensor:
        """(b,) number of light scalar products each row of A (b, C) costs."""
        crow = A.crow_indices()
        row = row_ids(crow)
        lens = self.width_of[A.col_indices()].double()                 # padded lengths: what is materialised
        return torch.zeros(A.shape[0], dtype=torch.float64, device=crow.device).index_add_(0, row, lens)

    def product_bounded(self, A: torch.Tensor, out: torch.Tensor, ws: Workspace | None = None,
                        max_products: float = 2_000_000, workers: int | None = 1) -> torch.Tensor:
        """product() in row groups of at most max_products light scalar products, the groups
        spread over `workers` threads (for_blocks; None: torch's thread count; ws is used when
        they run on one). Callers that already run on worker threads (ranking chunks) keep 1."""
        blocks = cut_rows(self.light_products(A).tolist(), A.shape[0], max_products)
        for_blocks(blocks, lambda r0, r1, w: self.product(slice_rows(A, r0, r1), out[r0:r1], w),
                   workers, out.device, ws)
        return out

    def product_split(self, A_light: torch.Tensor, A_heavy: torch.Tensor, out: torch.Tensor,
                      ws: Workspace | None = None) -> torch.Tensor:
        """out = A @ B^T for A given already split: A_light (b, C) sparse with no entry in a heavy
        column, A_heavy (b, n_heavy) dense (its heavy columns, in this operand's order)."""
        if len(self.heavy):
            torch.mm(A_heavy, self.dense.T, out=out)
        else:
            out.zero_()
        crow = A_light.crow_indices()
        row = row_ids(crow)
        self._scatter(row, A_light.col_indices(), A_light.values(), out, ws if ws is not None else Workspace())
        return out

    def product(self, A: torch.Tensor, out: torch.Tensor | None = None, ws: Workspace | None = None) -> torch.Tensor:
        """out (b, R) = A (b, C) sparse CSR @ B^T, dense. `out` (contiguous rows) is overwritten
        when given; ws: scratch reused between calls (a fresh one when None)."""
        b = A.shape[0]
        R = self.R
        crow, col, val = A.crow_indices(), A.col_indices(), A.values()
        dev = val.device
        if out is None:
            out = torch.empty(b, R, dtype=val.dtype, device=dev)
        row = row_ids(crow)                                                # (nA,)
        is_h = self.heavy_pos[col] >= 0 if len(self.heavy) else None
        if is_h is not None and bool(is_h.any()):
            Ah = torch.zeros(b, len(self.heavy), dtype=val.dtype, device=dev)           # (b, n_heavy)
            Ah[row[is_h], self.heavy_pos[col[is_h]]] = val[is_h]
            torch.mm(Ah, self.dense.T, out=out)                                         # overwrites out
            light = ~is_h
            row, col, val = row[light], col[light], val[light]
        else:
            out.zero_()
        self._scatter(row, col, val, out, ws if ws is not None else Workspace())
        return out

    def _pad(self, t_crow: torch.Tensor, t_col: torch.Tensor, t_val: torch.Tensor,
             ratio: float = PAD_RATIO) -> None:
        """The light transpose, given as CSR (C, R) (t_crow, t_col, t_val), grouped by list
        length (lengths in (w / ratio, w]), each group stored as dense (columns, width) matrices
        of row indices and values, padded with index 0 and value 0. A product then gathers whole
        padded rows (one contiguous copy per entry of A) instead of computing every product's
        source position with cumsums; the padding costs at most `ratio` x the products (about
        1.2x on power-law data)."""
        lens = t_crow[1:] - t_crow[:-1]                                               # (C,)
        dev = lens.device
        C = len(lens)
        longest = int(lens.max()) if C else 0
        bounds = [1]
        while bounds[-1] < longest:
            bounds.append(max(bounds[-1] + 1, int(-(-bounds[-1] * ratio // 1))))
        bucket = torch.searchsorted(torch.tensor(bounds, device=dev), lens)           # (C,) first bound >= len
        bucket[lens == 0] = -1                                                        # empty columns: no group
        self.bucket_of = bucket
        self.local_of = torch.zeros(C, dtype=torch.long, device=dev)                  # (C,) row in its group
        self.width_of = torch.zeros(C, dtype=torch.long, device=dev)                  # (C,) padded length
        self.pads: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for b in range(len(bounds)):
            cols = torch.nonzero(bucket == b).flatten()
            if len(cols) == 0:
                self.pads.append(None)
                continue
            n = lens[cols]
            w = int(n.max())
            self.local_of[cols] = torch.arange(len(cols), device=dev)
            self.width_of[cols] = w
            j = torch.arange(w, device=dev)
            valid = j[None, :] < n[:, None]                                           # (n_b, w)
            src = torch.where(valid, t_crow[cols][:, None] + j[None, :], 0)
            self.pads.append((torch.where(valid, t_col[src], 0).contiguous(),       # (n_b, w) rows of B
                              torch.where(valid, t_val[src], 0).contiguous()))       # (n_b, w) values, 0 = pad

    def _scatter(self, row, col, val, out, ws: Workspace):
        """out[row, j] += val * B^T[col, j] for every light entry (row, col, val) of A: per group
        of similar list lengths, gather the padded lists of the entries' columns (n, w), offset
        them by row x R, multiply by the values, one scatter-add."""
        if len(col) == 0:
            return
        dev, long = out.device, torch.long
        bo = self.bucket_of[col]                                                        # (nA,)
        order = torch.argsort(bo, stable=True)                                          # entries by group
        counts = torch.bincount(bo + 1, minlength=len(self.pads) + 1).tolist()          # [empty, group 0, ...]
        a_ones = bool((val == 1).all())
        flat = out.view(-1)
        s0 = counts[0]
        for b, n in enumerate(counts[1:]):
            if n == 0:
                continue
            sel = order[s0:s0 + n]
            s0 += n
            tc, tv = self.pads[b]
            w = tc.shape[1]
            loc = self.local_of[col[sel]]                                               # (n,)
            key = torch.index_select(tc, 0, loc, out=ws.get("key", n * w, long, dev).view(n, w))
            key += (row[sel] * self.R)[:, None]                                         # flat index in out
            prod = torch.index_select(tv, 0, loc, out=ws.get("prod", n * w, out.dtype, dev).view(n, w))
            if not a_ones:
                prod *= val[sel].to(out.dtype)[:, None]
            flat.scatter_add_(0, key.view(-1), prod.view(-1))
