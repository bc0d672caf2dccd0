#!/usr/bin/python3
"""Golden data for DenseCL's loss (models/densecl.c, stages/densecl.c), in float64 PyTorch.

Run from the repository root with Debian's python3 (it has torch):

    /usr/bin/python3 tests/golden/gen_densecl.py

It rewrites tests/golden/densecl_expect.safetensors byte-identically on every run (fixed
seed, one thread). The loss follows WXinlong/DenseCL's densecl.py forward_train line by
line, on the neck's outputs (the heads are head.h's, checked elsewhere): from the raw
global projections q_raw, k_raw (N, Dg), the raw dense projections q_grid_raw,
k_grid_raw (N, S, Dd; the reference's N x C x S^2 transposed), and the backbone tokens
q_b, k_b (N, S, D),
  q, k, q_grid, k_grid, q_b, k_b normalised (k2 = normalize(mean_s k_grid_raw)),
  l_pos = q.k, l_neg = q queue^T;
  j* = argmax_t q_b[s] . k_b[t] (cosine), positives k_grid[j*], l_neg_dense = q_grid queue2^T,
  loss = (1 - lambda) CE([l_pos, l_neg] / T) + lambda CE([l_pos_dense, l_neg_dense] / T).
The two queues are given as ours keeps them: one ring (K, Dg + Dd) of rows
[global key | pooled dense key]; the reference's queue and queue2 are its two halves,
transposed. The backbone tokens are drawn so that every query token's best key token
beats the second best by a clear margin (asserted), so float32 cannot flip the argmax.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "densecl_expect.safetensors")
SEED = 777
CFG = {"batch": 3, "tokens": 9, "backbone_dim": 12, "global_dim": 8, "dense_dim": 6,
       "queue_len": 11, "T": 0.2, "lambda": 0.5}
MARGIN = 0.05  # smallest cosine gap between a query token's best and second-best key


def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return f32(x / np.linalg.norm(x, axis=1, keepdims=True))


def backbone_pair(rng, N, S, D):
    """q_b, k_b (N, S, D): the key view is a shuffled, rescaled, noisy copy of the query
    view (as two crops of one image share content), redrawn until the argmax is clear."""
    while True:
        q_b = rng.normal(size=(N, S, D))
        k_b = np.empty_like(q_b)
        for n in range(N):
            perm = rng.permutation(S)
            scale = rng.uniform(0.5, 3.0, size=(S, 1))
            k_b[n] = scale * (q_b[n, perm] + 0.6 * rng.normal(size=(S, D)))
        q_b, k_b = f32(q_b), f32(k_b)
        qn = q_b / np.linalg.norm(q_b, axis=2, keepdims=True)
        kn = k_b / np.linalg.norm(k_b, axis=2, keepdims=True)
        sim = np.einsum("nsd,ntd->nst", qn, kn)
        top2 = np.sort(sim, axis=2)[:, :, -2:]
        if np.min(top2[:, :, 1] - top2[:, :, 0]) > MARGIN:
            return q_b, k_b


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    c = CFG
    N, S, D, Dg, Dd, K = (c["batch"], c["tokens"], c["backbone_dim"], c["global_dim"],
                          c["dense_dim"], c["queue_len"])
    T, lam = c["T"], c["lambda"]
    q_raw, k_raw = f32(rng.normal(size=(N, Dg))), f32(rng.normal(size=(N, Dg)))
    q_grid_raw = f32(rng.normal(size=(N, S, Dd)))
    k_grid_raw = f32(rng.normal(size=(N, S, Dd)) + 0.3)  # a mean the pooled key can see
    q_b, k_b = backbone_pair(rng, N, S, D)
    ring = np.concatenate([unit_rows(rng, K, Dg), unit_rows(rng, K, Dd)], axis=1)
    inputs = {"q_raw": q_raw, "k_raw": k_raw, "q_grid_raw": q_grid_raw,
              "k_grid_raw": k_grid_raw, "q_b": q_b, "k_b": k_b, "queue": ring}

    Q, QG = t64(q_raw, True), t64(q_grid_raw, True)
    queue = t64(ring[:, :Dg]).t()   # the reference's (C, K) buffers
    queue2 = t64(ring[:, Dg:]).t()
    # the reference's layouts: grids and backbones N x C x S^2
    q_grid = QG.permute(0, 2, 1)
    qb = t64(q_b).permute(0, 2, 1)
    with torch.no_grad():
        k_grid_c = t64(k_grid_raw).permute(0, 2, 1)
        k2 = F.adaptive_avg_pool1d(k_grid_c, 1).view(N, -1)  # the neck's avgpool2
        kb = t64(k_b).permute(0, 2, 1)
        k = F.normalize(t64(k_raw), dim=1)
        k2 = F.normalize(k2, dim=1)
        k_grid = F.normalize(k_grid_c, dim=1)
        kb = F.normalize(kb, dim=1)
    q = F.normalize(Q, dim=1)
    q_grid = F.normalize(q_grid, dim=1)
    qb = F.normalize(qb, dim=1)

    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue])
    backbone_sim_matrix = torch.matmul(qb.permute(0, 2, 1), kb)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]  # N x S^2
    indexed_k_grid = torch.gather(k_grid, 2,
                                  densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1))
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)
    q_grid_rows = q_grid.permute(0, 2, 1).reshape(-1, q_grid.size(1))
    l_neg_dense = torch.einsum("nc,ck->nk", [q_grid_rows, queue2])

    def contra(pos, neg):  # mmselfsup's ContrastiveHead
        logits = torch.cat((pos, neg), dim=1) / T
        return F.cross_entropy(logits, torch.zeros(logits.size(0), dtype=torch.long))

    loss_single = contra(l_pos, l_neg)
    loss_dense = contra(l_pos_dense, l_neg_dense)
    loss = (1 - lam) * loss_single + lam * loss_dense
    loss.backward()

    # the argmax with plain numpy, on the float32 inputs, must agree
    qn = q_b / np.linalg.norm(q_b, axis=2, keepdims=True)
    kn = k_b / np.linalg.norm(k_b, axis=2, keepdims=True)
    assert np.array_equal(np.argmax(np.einsum("nsd,ntd->nst", qn, kn), axis=2),
                          densecl_sim_ind.numpy())
    # the matches are not the identity (the shuffle), and not all alike
    assert len(np.unique(densecl_sim_ind.numpy())) > S // 2

    expect = {
        "idx": densecl_sim_ind.numpy().astype(np.int64),
        "k2": f32(k2.numpy()),
        "loss_single": f32([loss_single.item()]),
        "loss_dense": f32([loss_dense.item()]),
        "loss": f32([loss.item()]),
        "grad.q_raw": f32(Q.grad.numpy()),
        "grad.q_grid_raw": f32(QG.grad.numpy()),
    }
    meta = {k: str(v) for k, v in CFG.items()}
    meta.update(format="mimicps-golden-densecl", version="1", reference="torch float64")
    safetensors_io.save(OUT, {**inputs, **expect}, meta)


if __name__ == "__main__":
    main()
