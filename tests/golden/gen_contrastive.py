#!/usr/bin/python3
"""Golden data for the contrastive heads and losses, in float64 PyTorch.

Run from the repository root with Debian's python3 (it has torch):

    /usr/bin/python3 tests/golden/gen_contrastive.py

It rewrites tests/golden/contrastive_expect.safetensors byte-identically on every run
(fixed seeds, one thread). Four cases, each with its inputs, losses and gradients:

- MoCo v3: a projector and a predictor built as facebookresearch/moco-v3's _build_mlp
  (nn.Linear / nn.BatchNorm1d / nn.ReLU in an nn.Sequential, so the tensor names are
  torch's), q = normalize(predictor(projector(x))) for two views, keys of two workers
  (this one second), loss ctr(q1, k2) + ctr(q2, k1), ctr = CE(q k^T / tau) * 2 tau;
  gradients of every head tensor and of both inputs; running statistics after the two
  training-mode forwards.
- MoCo v2: InfoNCE of normalize(q_raw) against k and a queue, target 0.
- SupCon: labels, two views, HobbitLong/SupContrast's formula (|P| clamped to >= 1).
- MIMIC (ours, METHODS.md): timm mixup labels (flip pairing, smoothing), positive
  weights w = y~ y~^T, loss CE(logits, y~) + w_con * SupCon_w(normalize(z_raw), w).
See tests/golden/README.md for every tensor and the metadata.
"""

import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "contrastive_expect.safetensors")
SEED = 4242
CFG = {
    "batch": 6, "in_dim": 16, "mlp_dim": 24, "out_dim": 8, "proj_layers": 3, "pred_layers": 2,
    "bn_eps": 1e-5, "bn_momentum": 0.1, "workers": 2, "v3_offset": 6, "v3_tau": 0.2,
    "queue_len": 10, "queue_T": 0.2, "supcon_tau": 0.1, "supcon_base_tau": 0.07,
    "num_classes": 4, "mix_lam": 0.7, "smoothing": 0.1, "mimic_tau": 0.1, "w_con": 1.0,
}


def f32(a):
    """float32-rounded numpy array, the values the C side reads."""
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


# ----------------------------------------------------------------------------- MoCo v3

def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """moco-v3 builder.py's _build_mlp, in float64."""
    mlp = []
    for i in range(num_layers):
        d1 = input_dim if i == 0 else mlp_dim
        d2 = output_dim if i == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            mlp.append(nn.BatchNorm1d(d2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*mlp).double()


def randomise(seq, rng):
    """float32-representable random weights: Linear N(0, 1/sqrt(fan_in)); BN weight
    1 + N(0, 0.1), bias N(0, 0.1). Returns {name: float32 array} in state_dict order."""
    out = {}
    with torch.no_grad():
        for name, p in seq.named_parameters():
            if p.ndim == 2:
                v = rng.normal(0.0, 1.0 / np.sqrt(p.shape[1]), tuple(p.shape))
            elif name.endswith("weight"):
                v = 1.0 + rng.normal(0.0, 0.1, tuple(p.shape))
            else:
                v = rng.normal(0.0, 0.1, tuple(p.shape))
            out[name] = f32(v)
            p.copy_(torch.from_numpy(out[name].astype(np.float64)))
    return out


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return f32(x / np.linalg.norm(x, axis=1, keepdims=True))


def ctr(q, k, offset, tau):
    """moco-v3 MoCo.contrastive_loss with the keys of every worker already gathered."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = q @ k.t() / tau
    labels = torch.arange(q.shape[0]) + offset
    return F.cross_entropy(logits, labels) * (2 * tau)


def case_v3(rng, T, E):
    c = CFG
    proj = build_mlp(c["proj_layers"], c["in_dim"], c["mlp_dim"], c["out_dim"])
    pred = build_mlp(c["pred_layers"], c["out_dim"], c["mlp_dim"], c["out_dim"])
    for prefix, seq in (("projector", proj), ("predictor", pred)):
        for name, v in randomise(seq, rng).items():
            T[f"{prefix}.{name}"] = v
    N, M = c["batch"], c["batch"] * c["workers"]
    x1, x2 = f32(rng.normal(size=(N, c["in_dim"]))), f32(rng.normal(size=(N, c["in_dim"])))
    k1, k2 = unit_rows(rng, M, c["out_dim"]), unit_rows(rng, M, c["out_dim"])
    T.update({"v3.x1": x1, "v3.x2": x2, "v3.k1": k1, "v3.k2": k2})
    X1, X2 = t64(x1, True), t64(x2, True)
    proj.train()
    pred.train()
    q1 = pred(proj(X1))
    q2 = pred(proj(X2))
    loss = (ctr(q1, t64(k2), c["v3_offset"], c["v3_tau"]) +
            ctr(q2, t64(k1), c["v3_offset"], c["v3_tau"]))
    loss.backward()
    E["v3.loss"] = f32([loss.item()])
    E["v3.q1"] = f32(F.normalize(q1, dim=1).detach().numpy())
    for prefix, seq in (("projector", proj), ("predictor", pred)):
        for name, p in seq.named_parameters():
            E[f"v3.grad.{prefix}.{name}"] = f32(p.grad.numpy())
        for name, b in seq.named_buffers():
            if "running" in name:
                E[f"v3.after.{prefix}.{name}"] = f32(b.numpy())
    E["v3.grad.x1"] = f32(X1.grad.numpy())
    E["v3.grad.x2"] = f32(X2.grad.numpy())


# ----------------------------------------------------------------------------- MoCo v2

def case_queue(rng, T, E):
    c = CFG
    N, K, D = c["batch"], c["queue_len"], c["out_dim"]
    q_raw = f32(rng.normal(size=(N, D)))
    k, queue = unit_rows(rng, N, D), unit_rows(rng, K, D)
    T.update({"queue.q_raw": q_raw, "queue.k": k, "queue.queue": queue})
    Q = t64(q_raw, True)
    q = F.normalize(Q, dim=1)
    # moco builder.py: l_pos = einsum('nc,nc->n'), l_neg = q @ queue^T (its queue is
    # stored (D, K); ours is (K, D) rows), logits / T, labels 0
    l_pos = torch.einsum("nc,nc->n", [q, t64(k)]).unsqueeze(-1)
    l_neg = q @ t64(queue).t()
    logits = torch.cat([l_pos, l_neg], dim=1) / c["queue_T"]
    loss = F.cross_entropy(logits, torch.zeros(N, dtype=torch.long))
    loss.backward()
    E["queue.loss"] = f32([loss.item()])
    E["queue.grad.q_raw"] = f32(Q.grad.numpy())


# ----------------------------------------------------------------------------- SupCon

def supcon_weighted(z, w, tau, scale):
    """SupCon with positive weights w (M, M), anchors = contrasts = all rows, self
    excluded, rows without positives contributing 0 to the mean (|P| clamped to 1)."""
    M = z.shape[0]
    logits_mask = 1.0 - torch.eye(M, dtype=z.dtype)
    logits = z @ z.t() / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    wm = w * logits_mask
    W = wm.sum(1)
    W = torch.where(W < 1e-6, torch.ones_like(W), W)
    return -(scale * (wm * log_prob).sum(1) / W).mean()


def supcon_reference(features, labels, tau, base_tau):
    """HobbitLong/SupContrast losses.py SupConLoss (contrast_mode 'all'), written out
    independently: features (bsz, n_views, D), labels (bsz)."""
    bsz, n_views = features.shape[0], features.shape[1]
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).double().repeat(n_views, n_views)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    adc = contrast @ contrast.t() / tau
    logits = adc - adc.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1.0 - torch.eye(bsz * n_views, dtype=torch.float64)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    pos = mask.sum(1)
    pos = torch.where(pos < 1e-6, torch.ones_like(pos), pos)
    return (-(tau / base_tau) * (mask * log_prob).sum(1) / pos).view(n_views, bsz).mean()


def case_supcon(rng, T, E):
    c = CFG
    B, D = c["batch"], c["out_dim"]
    labels = rng.integers(0, 3, size=B)
    labels[0] = 3  # one class with a single sample: its only positive is its other view
    z_raw = f32(rng.normal(size=(2 * B, D)))  # view-major: rows v*B + b
    T.update({"supcon.z_raw": z_raw, "supcon.labels": np.tile(labels, 2).astype(np.int64)})
    Z = t64(z_raw, True)
    z = F.normalize(Z, dim=1)
    lab = torch.tensor(np.tile(labels, 2))
    w = torch.eq(lab.view(-1, 1), lab.view(1, -1)).double()
    loss = supcon_weighted(z, w, c["supcon_tau"], c["supcon_tau"] / c["supcon_base_tau"])
    ref = supcon_reference(torch.stack([z[:B], z[B:]], dim=1), torch.tensor(labels),
                           c["supcon_tau"], c["supcon_base_tau"])
    assert abs(loss.item() - ref.item()) < 1e-12, (loss.item(), ref.item())
    loss.backward()
    E["supcon.loss"] = f32([loss.item()])
    E["supcon.grad.z_raw"] = f32(Z.grad.numpy())


# ----------------------------------------------------------------------------- MIMIC

def mixup_target(labels, K, lam, smoothing):
    """timm's mixup_target with the flip pairing: lam y_b + (1 - lam) y_{B-1-b}, each
    one-hot smoothed to off = s / K, on = 1 - s + off."""
    off = smoothing / K
    on = 1.0 - smoothing + off
    y1 = torch.full((len(labels), K), off, dtype=torch.float64)
    y1[torch.arange(len(labels)), labels] = on
    return y1 * lam + y1.flip(0) * (1.0 - lam)


def case_mimic(rng, T, E):
    c = CFG
    B, D, K = c["batch"], c["out_dim"], c["num_classes"]
    labels = torch.tensor(rng.integers(0, K, size=B))
    y = mixup_target(labels, K, c["mix_lam"], c["smoothing"])
    z_raw = f32(rng.normal(size=(2 * B, D)))
    logits = f32(rng.normal(size=(B, K)))
    T.update({"mimic.labels": labels.numpy().astype(np.int64), "mimic.z_raw": z_raw,
              "mimic.logits": logits})
    Z, L = t64(z_raw, True), t64(logits, True)
    z = F.normalize(Z, dim=1)
    y2 = torch.cat([y, y], dim=0)  # both views carry the sample's soft label
    w = y2 @ y2.t()
    loss_con = supcon_weighted(z, w, c["mimic_tau"], 1.0)
    loss_ce = torch.sum(-y * F.log_softmax(L, dim=1), dim=1).mean()  # timm SoftTargetCrossEntropy
    loss = loss_ce + c["w_con"] * loss_con
    loss.backward()
    E["mimic.y"] = f32(y.numpy())
    E["mimic.loss_con"] = f32([loss_con.item()])
    E["mimic.loss_ce"] = f32([loss_ce.item()])
    E["mimic.loss"] = f32([loss.item()])
    E["mimic.grad.z_raw"] = f32(Z.grad.numpy())
    E["mimic.grad.logits"] = f32(L.grad.numpy())


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    T, E = {}, {}
    case_v3(rng, T, E)
    case_queue(rng, T, E)
    case_supcon(rng, T, E)
    case_mimic(rng, T, E)
    meta = {k: str(v) for k, v in CFG.items()}
    meta.update(format="mimicps-golden-contrastive", version="1", reference="torch float64")
    safetensors_io.save(OUT, {**T, **E}, meta)


if __name__ == "__main__":
    main()
