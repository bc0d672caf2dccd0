#!/usr/bin/python3
"""Golden data for the BYOL and ContraWarping losses and heads, in float64 PyTorch.

Run from the repository root with Debian's python3 (it has torch):

    /usr/bin/python3 tests/golden/gen_byol.py

It rewrites tests/golden/byol_expect.safetensors byte-identically on every run (fixed
seeds, one thread). One set of heads and inputs, two losses:

- the online projector and predictor as BYOL's MLP (nn.Linear, nn.BatchNorm1d, nn.ReLU,
  nn.Linear in an nn.Sequential, so the tensor names are torch's: projector.0.weight,
  projector.1.{weight,bias}, projector.3.weight, predictor.0.weight,
  predictor.1.{weight,bias}, predictor.3.{weight,bias}; ours: no bias where BYOL's
  gradient of it is exactly zero, before a BN and at the projector's output, whose shift
  the predictor's BN removes), p_v = predictor(projector(x_v)) for two views in
  training mode;
- the target projections z1, z2 and those of the warped views zw1 (warp of view 1),
  zw2 (warp of view 2) are constants (the momentum network's outputs; stop-gradient);
- byol: L = mean(2 - 2 cos(p1, z2)) + mean(2 - 2 cos(p2, z1));
- cw (ContraWarping, ours, docs/objectives.md): L = byol +
  w_neg * sum_v mean_i -log softmax([cos(p_v, z_o), cos(p_v, zw_o)] / tau)[0], where o is
  the other view, written as cross-entropy over the two logits;
  each with the gradients of every head tensor and of x1, x2.
Before writing, the cosine form is checked against BYOL's normalised-MSE form
||p/|p| - z/|z|||^2 and the negative term against softplus((cos_neg - cos_pos)/tau).

It also writes the whole stages for the gradient dump (`mimic-worker --dump-grads`,
test_byol runs it): gen_encoder.py's tiny ViT (timm names; its encoder_forward, so one
specification) with these heads, online weights and a different target ("momentum.<name>",
the servers' EMA copy) in byol_stage_weights.safetensors; a batch of 4 samples with 2
views each (byol_stage_batch2) and the same with each sample's two local warps appended
(views 3, 4 = warps of views 1, 2; byol_stage_batch4); and in byol_stage_expect the loss
and the gradient of every online tensor of both stages ("byol.*" on batch2, "cw.*" on
batch4). Features are the CLS row of the final norm; every head's BN normalises one
view's batch (the target's warped views too), in training mode.
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

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byol_expect.safetensors")
SEED = 5151
CFG = {"batch": 6, "in_dim": 16, "mlp_dim": 24, "out_dim": 8, "bn_eps": 1e-5,
       "bn_momentum": 0.1, "w_neg": 0.7, "tau": 0.3}


def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def build_mlp(in_dim, hidden, out, last_bias):
    """BYOL's MLP (the reference's haiku MLP / byol-pytorch's): Linear, BN, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Linear(hidden, out, bias=last_bias)).double()


def randomise(seq, rng):
    out = {}
    with torch.no_grad():
        for name, p in seq.named_parameters():
            if p.ndim == 2:
                v = rng.normal(0.0, 1.0 / np.sqrt(p.shape[1]), tuple(p.shape))
            elif name == "1.weight":
                v = 1.0 + rng.normal(0.0, 0.1, tuple(p.shape))
            else:
                v = rng.normal(0.0, 0.1, tuple(p.shape))
            out[name] = f32(v)
            p.copy_(torch.from_numpy(out[name].astype(np.float64)))
    return out


def byol_term(p, z):
    return (2 - 2 * F.cosine_similarity(p, z, dim=1, eps=0)).mean()


def neg_term(p, z, zw, tau):
    pn, zn, wn = F.normalize(p, dim=1), F.normalize(z, dim=1), F.normalize(zw, dim=1)
    logits = torch.stack([(pn * zn).sum(1), (pn * wn).sum(1)], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(p.shape[0], dtype=torch.long))


def run(weights, x1, x2, z, zw, loss_kind):
    c = CFG
    proj = build_mlp(c["in_dim"], c["mlp_dim"], c["out_dim"], False)
    pred = build_mlp(c["out_dim"], c["mlp_dim"], c["out_dim"], True)
    with torch.no_grad():
        for prefix, seq in (("projector", proj), ("predictor", pred)):
            for name, p in seq.named_parameters():
                p.copy_(torch.from_numpy(weights[f"{prefix}.{name}"].astype(np.float64)))
    proj.train()
    pred.train()
    X = [t64(x1, True), t64(x2, True)]
    P = [pred(proj(X[0])), pred(proj(X[1]))]
    Z = [t64(z[0]), t64(z[1])]
    ZW = [t64(zw[0]), t64(zw[1])]
    loss = byol_term(P[0], Z[1]) + byol_term(P[1], Z[0])
    # independent forms: BYOL's normalised MSE, and softplus for the 2-way InfoNCE
    mse = sum(((F.normalize(P[v], dim=1) - F.normalize(Z[1 - v], dim=1)) ** 2).sum(1).mean()
              for v in range(2))
    assert abs(mse.item() - loss.item()) < 1e-12
    if loss_kind == "cw":
        neg = neg_term(P[0], Z[1], ZW[1], c["tau"]) + neg_term(P[1], Z[0], ZW[0], c["tau"])
        sp = 0
        for v in range(2):
            pn, zn, wn = (F.normalize(t, dim=1) for t in (P[v], Z[1 - v], ZW[1 - v]))
            sp = sp + F.softplus(((pn * wn).sum(1) - (pn * zn).sum(1)) / c["tau"]).mean()
        assert abs(sp.item() - neg.item()) < 1e-12
        loss = loss + c["w_neg"] * neg
    loss.backward()
    E = {f"{loss_kind}.loss": f32([loss.item()])}
    for prefix, seq in (("projector", proj), ("predictor", pred)):
        for name, p in seq.named_parameters():
            E[f"{loss_kind}.grad.{prefix}.{name}"] = f32(p.grad.numpy())
    E[f"{loss_kind}.grad.x1"] = f32(X[0].grad.numpy())
    E[f"{loss_kind}.grad.x2"] = f32(X[1].grad.numpy())
    return E


# ----------------------------------------------------------------------------- whole stages

STAGE = {"batch": 4, "mlp_dim": 16, "out_dim": 8}


def stage_files(rng, w_neg, tau):
    import gen_encoder as ge  # its CFG is the model; imported here, after torch is set up
    c = STAGE
    D = ge.CFG["embed_dim"]
    online, target = ge.make_weights(rng), ge.make_weights(rng)
    for W in (online, target):
        for prefix, (i, b) in (("projector", (D, False)), ("predictor", (c["out_dim"], True))):
            seq = build_mlp(i, c["mlp_dim"], c["out_dim"], b)
            for name, v in randomise(seq, rng).items():
                W[f"{prefix}.{name}"] = v
    B, C, S = c["batch"], ge.CFG["in_chans"], ge.CFG["img_size"]
    g = f32(rng.normal(size=(B, 2, C, S, S)))
    # "warps": each global view changed in a block of pixels (the dump takes any images)
    wv = g.copy()
    wv[:, :, :, 3:8, 2:9] += f32(rng.normal(0.0, 0.7, size=(B, 2, C, 5, 7)))
    batch2 = g.reshape(B * 2, C, S, S)
    batch4 = np.concatenate([g, wv], axis=1).reshape(B * 4, C, S, S)

    def heads(W, prefix):
        seq = build_mlp(D if prefix == "projector" else c["out_dim"], c["mlp_dim"],
                        c["out_dim"], prefix == "predictor")
        with torch.no_grad():
            for name, p in seq.named_parameters():
                p.copy_(torch.from_numpy(W[f"{prefix}.{name}"].astype(np.float64)))
        return seq.train()

    def run_stage(kind, imgs, V):
        P = {n: torch.tensor(w, dtype=torch.float64, requires_grad=n != "pos_embed")
             for n, w in online.items() if not n.startswith(("projector", "predictor"))}
        T = {n: torch.tensor(w, dtype=torch.float64) for n, w in target.items()
             if not n.startswith(("projector", "predictor"))}
        proj, pred, tproj = heads(online, "projector"), heads(online, "predictor"), \
            heads(target, "projector")
        x = torch.tensor(imgs, dtype=torch.float64).reshape(B, V, C, S, S)
        feats = ge.encoder_forward(P, x[:, :2].reshape(B * 2, C, S, S))[:, 0].reshape(B, 2, D)
        with torch.no_grad():
            tf = ge.encoder_forward(T, x.reshape(B * V, C, S, S))[:, 0].reshape(B, V, D)
            z = [tproj(tf[:, v]) for v in range(V)]
        p = [pred(proj(feats[:, v])) for v in range(2)]
        loss = byol_term(p[0], z[1]) + byol_term(p[1], z[0])
        if kind == "cw":
            loss = loss + w_neg * (neg_term(p[0], z[1], z[3], tau) + neg_term(p[1], z[0], z[2], tau))
        loss.backward()
        E = {f"{kind}.loss": f32([loss.item()])}
        for n, t in P.items():
            if n != "pos_embed":
                E[f"{kind}.grad.{n}"] = f32(t.grad.numpy())
        for prefix, seq in (("projector", proj), ("predictor", pred)):
            for name, t in seq.named_parameters():
                E[f"{kind}.grad.{prefix}.{name}"] = f32(t.grad.numpy())
        return E

    E = {}
    E.update(run_stage("byol", batch2, 2))
    E.update(run_stage("cw", batch4, 4))
    weights = dict(online)
    weights.update({f"momentum.{n}": v for n, v in target.items() if n != "pos_embed"})
    meta = {k: str(v) for k, v in ge.CFG.items()}
    meta.update({k: str(v) for k, v in STAGE.items()})
    meta.update(w_neg=str(w_neg), tau=str(tau), format="mimicps-golden-byol-stage", version="1",
                reference="torch float64")
    d = os.path.dirname(OUT)
    safetensors_io.save(os.path.join(d, "byol_stage_weights.safetensors"), weights, meta)
    safetensors_io.save(os.path.join(d, "byol_stage_batch2.safetensors"), {"images": batch2}, meta)
    safetensors_io.save(os.path.join(d, "byol_stage_batch4.safetensors"), {"images": batch4}, meta)
    safetensors_io.save(os.path.join(d, "byol_stage_expect.safetensors"), E, meta)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    c = CFG
    T = {}
    for prefix, (i, o, b) in (("projector", (c["in_dim"], c["out_dim"], False)),
                              ("predictor", (c["out_dim"], c["out_dim"], True))):
        for name, v in randomise(build_mlp(i, c["mlp_dim"], o, b), rng).items():
            T[f"{prefix}.{name}"] = v
    N, D = c["batch"], c["out_dim"]
    x1, x2 = f32(rng.normal(size=(N, c["in_dim"]))), f32(rng.normal(size=(N, c["in_dim"])))
    z = [f32(rng.normal(size=(N, D))), f32(rng.normal(size=(N, D)))]
    # a warp changes a view a little: its target is near the unwarped one
    zw = [f32(z[v] + 0.5 * rng.normal(size=(N, D))) for v in range(2)]
    T.update({"x1": x1, "x2": x2, "z1": z[0], "z2": z[1], "zw1": zw[0], "zw2": zw[1]})
    E = {}
    E.update(run(T, x1, x2, z, zw, "byol"))
    E.update(run(T, x1, x2, z, zw, "cw"))
    meta = {k: str(v) for k, v in CFG.items()}
    meta.update(format="mimicps-golden-byol", version="1", reference="torch float64")
    safetensors_io.save(OUT, {**T, **E}, meta)
    stage_files(np.random.default_rng(SEED + 1), c["w_neg"], c["tau"])


if __name__ == "__main__":
    main()
