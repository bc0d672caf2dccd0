#!/usr/bin/python3
"""Golden data for the CRS-CONT stage (stages/crscont.c), float64 PyTorch, whole stage.

Run from the repository root with Debian's python3 (it has torch):

    /usr/bin/python3 tests/golden/gen_crscont.py

It rewrites tests/golden/crscont_expect.safetensors byte-identically on every run (fixed
seed, one thread). The file holds the weights of a tiny stage (timm-named ViT encoder,
coarse classifier head.*, projector.0/2.*), a batch (two views per sample, fine labels)
and the expected loss, its three parts and every parameter gradient. tests/test_crscont.c
runs `mimic-worker --dump-grads --train.stage=crscont` on it and compares.

The loss is written after hangyu94/CRS-CONT (pretrain.py, losses.py), independently of
the C code: features = normalize(projector(h)) stacked [bsz, n_views, dim]; SupConLoss
with the coarse labels where each anchor's mean log-probability of its positives is
multiplied by the weight of its coarse group (the reference hard-codes 0.5 for group 1;
here the weight vector is indexed by the group); CE of view 1's coarse logits; SimCLR
(SupConLoss without labels) on normalize(softmax(logits)) of both views, times w_simclr.
Differences from the reference, as in the C stage (ours): the classifier reads the CLS
feature h, not the normalised projection; fine labels go to coarse groups by a map.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
import gen_encoder  # noqa: E402
from gen_golden import f32  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crscont_expect.safetensors")
SEED = 2022
MODEL = {"img_size": 8, "in_chans": 1, "patch_size": 4, "embed_dim": 16, "depth": 1,
         "num_heads": 2, "mlp_ratio": 2}
CRS = {"coarse_map": "1,1,1,2,1,3,0", "weights": "1,0.5,1,1", "tau": 0.1, "base_tau": 0.07,
       "w_ce": 1.0, "w_simclr": 0.4, "proj_dim": 8}
BATCH = 6
LABELS = [0, 4, 3, 5, 6, 2]  # FER2013 order: angry, sad, happy, surprise, neutral, fear


def supcon(features, labels, tau, base_tau, weights=None):
    """SupContrast's SupConLoss (contrast_mode 'all') as CRS-CONT modified it:
    features [bsz, n_views, dim]; labels None = SimCLR; weights (bsz) per anchor."""
    bsz, n_views = features.shape[0], features.shape[1]
    if labels is None:
        mask = torch.eye(bsz, dtype=torch.float64)
    else:
        lab = labels.contiguous().view(-1, 1)
        mask = torch.eq(lab, lab.T).double()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    adc = contrast @ contrast.T / tau
    logits = adc - adc.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(n_views, n_views)
    logits_mask = 1.0 - torch.eye(bsz * n_views, dtype=torch.float64)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    if weights is not None:
        mean_log_prob_pos = mean_log_prob_pos * torch.cat([weights] * n_views)
    loss = -(tau / base_tau) * mean_log_prob_pos
    return loss.view(n_views, bsz).mean()


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    gen_encoder.CFG = dict(MODEL)
    weights = gen_encoder.make_weights(rng)
    cmap = [int(x) for x in CRS["coarse_map"].split(",")]
    gw = [float(x) for x in CRS["weights"].split(",")]
    G, D, k = max(cmap) + 1, MODEL["embed_dim"], CRS["proj_dim"]
    # the heads: N(0, 1/sqrt(fan_in)) weights, N(0, 0.1) biases (every tensor matters)
    for name, shape in (("head.weight", (G, D)), ("head.bias", (G,)),
                        ("projector.0.weight", (D, D)), ("projector.0.bias", (D,)),
                        ("projector.2.weight", (k, D)), ("projector.2.bias", (k,))):
        sd = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 0.1
        weights[name] = rng.normal(0.0, sd, shape).astype(np.float32)
    S, C = MODEL["img_size"], MODEL["in_chans"]
    # images (B*2, C, S, S) as the loader fills them: sample i's views in rows 2i, 2i+1;
    # each sample with its own gain and shift so that the features differ
    imgs = rng.normal(0.0, 1.0, (BATCH * 2, C, S, S))
    for r in range(BATCH * 2):
        imgs[r] = (0.5 + 0.3 * (r // 2)) * imgs[r] + 0.4 * ((r * 3) % 5) - 0.8
    imgs = imgs.astype(np.float32)

    P = {n: torch.tensor(w, dtype=torch.float64, requires_grad=n != "pos_embed")
         for n, w in weights.items()}
    x = torch.tensor(imgs, dtype=torch.float64)
    views = [x[0::2], x[1::2]]
    bsz = BATCH
    images = torch.cat(views, dim=0)  # pretrain.py: torch.cat([images[0], images[1]])
    h = gen_encoder.encoder_forward(P, images)[:, 0]
    z = F.linear(F.relu(F.linear(h, P["projector.0.weight"], P["projector.0.bias"])),
                 P["projector.2.weight"], P["projector.2.bias"])
    feats = F.normalize(z, dim=1)
    coarse_out = F.linear(h, P["head.weight"], P["head.bias"])
    f1, f2 = torch.split(feats, [bsz, bsz], dim=0)
    features = torch.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1)
    c1, c2 = torch.split(coarse_out, [bsz, bsz], dim=0)
    c = torch.cat([c1.unsqueeze(1), c2.unsqueeze(1)], dim=1)
    coarse = torch.tensor([cmap[y] for y in LABELS])
    aw = torch.tensor([gw[g] for g in coarse.tolist()], dtype=torch.float64)
    loss_con = supcon(features, coarse, CRS["tau"], CRS["base_tau"], aw)
    loss_ce = F.cross_entropy(c1, coarse)
    loss_simclr = supcon(F.normalize(F.softmax(c, dim=2), dim=2), None, CRS["tau"],
                         CRS["base_tau"])
    loss = loss_con + CRS["w_ce"] * loss_ce + CRS["w_simclr"] * loss_simclr
    loss.backward()

    tensors = {n: w for n, w in weights.items() if n != "pos_embed"}
    tensors.update({"images": imgs, "labels": np.array(LABELS, dtype=np.float32),
                    "loss": f32(loss.reshape(1)), "loss_con": f32(loss_con.reshape(1)),
                    "loss_ce": f32(loss_ce.reshape(1)),
                    "loss_simclr": f32(loss_simclr.reshape(1))})
    for name, t in P.items():
        if name != "pos_embed":
            tensors[f"grad.{name}"] = f32(t.grad)
    meta = {k2: str(v) for k2, v in MODEL.items()}
    meta.update({f"crscont.{k2}": str(v) for k2, v in CRS.items()})
    meta.update(format="mimicps-golden-crscont", version="1", batch=str(BATCH), seed=str(SEED),
                reference="torch float64")
    safetensors_io.save(OUT, tensors, meta)
    print(f"loss {loss.item():.6f} (SupCon_w {loss_con.item():.6f}, CE {loss_ce.item():.6f}, "
          f"SimCLR {loss_simclr.item():.6f}), written to {OUT}")


if __name__ == "__main__":
    main()
