#!/usr/bin/python3
"""Golden data for the C MAE: a tiny ViT masked autoencoder in float64 PyTorch.

Run from the repository root with Debian's python3 (it has torch):

    /usr/bin/python3 tests/golden/gen_golden.py

It rewrites tests/golden/{mae_tiny_weights,mae_tiny_batch,mae_tiny_expect,adamw_expect}
.safetensors byte-identically on every run (fixed seeds, one thread). The model follows
facebookresearch/mae models_mae.py (MaskedAutoencoderViT with timm's Block) with the
same tensor names; it is written out here with torch.nn.functional because neither timm
nor the reference repository is a dependency. See tests/golden/README.md.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

OUT_DIR = os.path.dirname(os.path.abspath(__file__))

CFG = {
    "img_size": 16, "in_chans": 3, "patch_size": 4,
    "embed_dim": 32, "depth": 2, "num_heads": 2,
    "decoder_embed_dim": 24, "decoder_depth": 1, "decoder_num_heads": 2,
    "mlp_ratio": 4, "mask_ratio": 0.75, "norm_pix_loss": 1,
}
BATCH = 3
SEED = 1729
LN_EPS = 1e-6
PIX_EPS = 1e-6
ADAMW = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.05}
FIXED = ("pos_embed", "decoder_pos_embed")  # sin-cos tables, stored but not trained


def meta(**extra):
    m = {k: str(v) for k, v in CFG.items()}
    m.update(format="mimicps-golden", version="1")
    m.update({k: str(v) for k, v in extra.items()})
    return m


# ----------------------------------------------------------------------------- tables

def sincos_1d(dim, pos):
    """(M, dim): [sin(pos * omega) | cos(pos * omega)], omega_k = 10000^(-k / (dim/2))."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid, cls_token):
    """MAE's get_2d_sincos_pos_embed, in float64: the first dim/2 columns encode the
    patch's column (w) coordinate, the last dim/2 its row (h); row 0 is the cls token."""
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64),
                             np.arange(grid, dtype=np.float64), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb


# ----------------------------------------------------------------------------- weights

def param_shapes():
    """Every tensor of the model with its shape, encoder first (timm names)."""
    c, p, d, dd = CFG["in_chans"], CFG["patch_size"], CFG["embed_dim"], CFG["decoder_embed_dim"]
    L = (CFG["img_size"] // p) ** 2
    r = CFG["mlp_ratio"]

    def block(prefix, w):
        return [(f"{prefix}.norm1.weight", (w,)), (f"{prefix}.norm1.bias", (w,)),
                (f"{prefix}.attn.qkv.weight", (3 * w, w)), (f"{prefix}.attn.qkv.bias", (3 * w,)),
                (f"{prefix}.attn.proj.weight", (w, w)), (f"{prefix}.attn.proj.bias", (w,)),
                (f"{prefix}.norm2.weight", (w,)), (f"{prefix}.norm2.bias", (w,)),
                (f"{prefix}.mlp.fc1.weight", (r * w, w)), (f"{prefix}.mlp.fc1.bias", (r * w,)),
                (f"{prefix}.mlp.fc2.weight", (w, r * w)), (f"{prefix}.mlp.fc2.bias", (w,))]

    shapes = [("cls_token", (1, 1, d)), ("pos_embed", (1, L + 1, d)),
              ("patch_embed.proj.weight", (d, c, p, p)), ("patch_embed.proj.bias", (d,))]
    for i in range(CFG["depth"]):
        shapes += block(f"blocks.{i}", d)
    shapes += [("norm.weight", (d,)), ("norm.bias", (d,)),
               ("decoder_embed.weight", (dd, d)), ("decoder_embed.bias", (dd,)),
               ("mask_token", (1, 1, dd)), ("decoder_pos_embed", (1, L + 1, dd))]
    for i in range(CFG["decoder_depth"]):
        shapes += block(f"decoder_blocks.{i}", dd)
    shapes += [("decoder_norm.weight", (dd,)), ("decoder_norm.bias", (dd,)),
               ("decoder_pred.weight", (p * p * c, dd)), ("decoder_pred.bias", (p * p * c,))]
    return shapes


def make_weights(rng):
    """Random (not MAE-init) float32 weights so that every tensor changes the output:
    linears N(0, clip(1/sqrt(fan_in), 0.02, 0.2)), tokens N(0, 0.2), LayerNorm weight
    1 + N(0, 0.1), biases N(0, 0.05)."""
    grid = CFG["img_size"] // CFG["patch_size"]
    w = {}
    for name, shape in param_shapes():
        if name in FIXED:
            v = sincos_2d(shape[-1], grid, cls_token=True).reshape(shape)
        elif name.endswith("_token"):
            v = rng.normal(0.0, 0.2, shape)
        elif ".norm" in name or name.startswith(("norm.", "decoder_norm.")):
            v = (1.0 if name.endswith(".weight") else 0.0) + rng.normal(
                0.0, 0.1 if name.endswith(".weight") else 0.05, shape)
        elif name.endswith(".bias"):
            v = rng.normal(0.0, 0.05, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.normal(0.0, min(0.2, max(0.02, 1.0 / math.sqrt(fan_in))), shape)
        w[name] = v.astype(np.float32)
    return w


def make_noise(rng):
    """(B, L) float32 masking noise in [0, 1) with no ties within a row, so the argsort
    (and hence the mask) does not depend on how a sort breaks ties."""
    L = (CFG["img_size"] // CFG["patch_size"]) ** 2
    while True:
        noise = rng.random((BATCH, L)).astype(np.float32)
        if all(len(np.unique(row)) == L for row in noise):
            return noise


# ----------------------------------------------------------------------------- model

def layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=LN_EPS)


def block(x, P, prefix, heads):
    """timm Block: x + attn(norm1(x)), then x + mlp(norm2(x)). qkv rows are [q; k; v],
    each split into heads of hd consecutive rows; scores scaled by hd^-0.5."""
    B, N, D = x.shape
    hd = D // heads
    h = layer_norm(x, P[f"{prefix}.norm1.weight"], P[f"{prefix}.norm1.bias"])
    qkv = F.linear(h, P[f"{prefix}.attn.qkv.weight"], P[f"{prefix}.attn.qkv.bias"])
    qkv = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = torch.softmax((q @ k.transpose(-2, -1)) * hd ** -0.5, dim=-1)
    a = (att @ v).transpose(1, 2).reshape(B, N, D)
    x = x + F.linear(a, P[f"{prefix}.attn.proj.weight"], P[f"{prefix}.attn.proj.bias"])
    h = layer_norm(x, P[f"{prefix}.norm2.weight"], P[f"{prefix}.norm2.bias"])
    h = F.gelu(F.linear(h, P[f"{prefix}.mlp.fc1.weight"], P[f"{prefix}.mlp.fc1.bias"]))
    return x + F.linear(h, P[f"{prefix}.mlp.fc2.weight"], P[f"{prefix}.mlp.fc2.bias"])


def patchify(imgs, p):
    """(B, C, H, W) -> (B, L, p*p*C), patches row-major, pixels ordered (i, j, c)."""
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, h * w, p * p * C)


def random_masking(x, noise, mask_ratio):
    """MAE's per-sample masking with the noise given: keep the int(L*(1-r)) patches of
    smallest noise (stable argsort), mask = 1 for the removed ones."""
    B, L, D = x.shape
    keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, L, dtype=x.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore, ids_shuffle


def mae_forward(P, imgs, noise):
    p = CFG["patch_size"]
    x = F.conv2d(imgs, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)  # (B, L, D)
    x = x + P["pos_embed"][:, 1:, :]
    x, mask, ids_restore, ids_shuffle = random_masking(x, noise, CFG["mask_ratio"])
    cls = (P["cls_token"] + P["pos_embed"][:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for i in range(CFG["depth"]):
        x = block(x, P, f"blocks.{i}", CFG["num_heads"])
    latent = layer_norm(x, P["norm.weight"], P["norm.bias"])

    y = F.linear(latent, P["decoder_embed.weight"], P["decoder_embed.bias"])
    B, L, Dd = y.shape[0], ids_restore.shape[1], y.shape[2]
    masked = P["mask_token"].expand(B, L + 1 - y.shape[1], Dd)
    z = torch.cat([y[:, 1:, :], masked], dim=1)
    z = torch.gather(z, 1, ids_restore.unsqueeze(-1).expand(-1, -1, Dd))  # unshuffle
    z = torch.cat([y[:, :1, :], z], dim=1) + P["decoder_pos_embed"]
    for i in range(CFG["decoder_depth"]):
        z = block(z, P, f"decoder_blocks.{i}", CFG["decoder_num_heads"])
    z = layer_norm(z, P["decoder_norm.weight"], P["decoder_norm.bias"])
    pred = F.linear(z, P["decoder_pred.weight"], P["decoder_pred.bias"])[:, 1:, :]

    target = patchify(imgs, p)
    if CFG["norm_pix_loss"]:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, unbiased=True, keepdim=True)
        target = (target - mean) / (var + PIX_EPS) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    loss = (per_patch * mask).sum() / mask.sum()
    return loss, pred, mask, latent, target, ids_shuffle


def self_check(P, imgs, noise, mask, ids_shuffle):
    """Cross-checks the hand-written pieces against independent torch code, so a slip
    here cannot silently become the C model's specification."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        # Block == nn.TransformerEncoderLayer(norm_first, exact GELU), whose in_proj is
        # laid out [q; k; v] like timm's qkv.
        for prefix, d, heads in (("blocks.0", CFG["embed_dim"], CFG["num_heads"]),
                                 ("decoder_blocks.0", CFG["decoder_embed_dim"],
                                  CFG["decoder_num_heads"])):
            layer = torch.nn.TransformerEncoderLayer(
                d, heads, dim_feedforward=CFG["mlp_ratio"] * d, dropout=0.0, activation="gelu",
                layer_norm_eps=LN_EPS, batch_first=True, norm_first=True, dtype=torch.float64)
            pairs = {"self_attn.in_proj_weight": "attn.qkv.weight",
                     "self_attn.in_proj_bias": "attn.qkv.bias",
                     "self_attn.out_proj.weight": "attn.proj.weight",
                     "self_attn.out_proj.bias": "attn.proj.bias",
                     "linear1.weight": "mlp.fc1.weight", "linear1.bias": "mlp.fc1.bias",
                     "linear2.weight": "mlp.fc2.weight", "linear2.bias": "mlp.fc2.bias",
                     "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
                     "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias"}
            for theirs, ours in pairs.items():
                layer.get_parameter(theirs).copy_(P[f"{prefix}.{ours}"])
            x = torch.randn(BATCH, 7, d, dtype=torch.float64, generator=gen)
            err = (layer(x) - block(x, P, prefix, heads)).abs().max().item()
            assert err < 1e-12, f"{prefix}: block differs from TransformerEncoderLayer by {err}"
        # Patch embedding == patchify then a linear whose weight is the conv weight with
        # its (c, i, j) columns reordered to patchify's (i, j, c).
        w = P["patch_embed.proj.weight"]
        conv = F.conv2d(imgs, w, P["patch_embed.proj.bias"], stride=CFG["patch_size"])
        lin = F.linear(patchify(imgs, CFG["patch_size"]),
                       w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), P["patch_embed.proj.bias"])
        assert (conv.flatten(2).transpose(1, 2) - lin).abs().max().item() < 1e-12
        # mask[b, l] = 1 exactly for the patches whose noise is not among the keep smallest.
        keep = int(noise.shape[1] * (1 - CFG["mask_ratio"]))
        rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
        assert torch.equal(mask, (rank >= keep).to(mask.dtype))
        assert torch.equal(ids_shuffle, torch.argsort(noise, dim=1))


# ----------------------------------------------------------------------------- AdamW

def adamw_step(weights, grads):
    """One torch.optim.AdamW step in float64 from float32 weights and grads, with MAE's
    param groups: no weight decay for 1-D tensors and biases, decay for the rest."""
    decay, no_decay, params = [], [], {}
    for name, w in weights.items():
        if name in FIXED:
            continue
        t = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(grads[name], dtype=torch.float64)
        params[name] = t
        (no_decay if t.ndim == 1 or name.endswith(".bias") else decay).append(t)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ADAMW["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"])
    opt.step()
    return {name: t.detach().numpy() for name, t in params.items()}


# ----------------------------------------------------------------------------- main

def f32(t):
    return t.detach().numpy().astype(np.float32)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    weights = make_weights(rng)
    imgs = rng.normal(0.0, 1.0, (BATCH, CFG["in_chans"], CFG["img_size"], CFG["img_size"]))
    imgs = imgs.astype(np.float32)
    noise = make_noise(rng)

    P = {n: torch.tensor(w, dtype=torch.float64, requires_grad=n not in FIXED)
         for n, w in weights.items()}
    imgs64, noise64 = torch.tensor(imgs, dtype=torch.float64), torch.tensor(noise, dtype=torch.float64)
    loss, pred, mask, latent, target, ids_shuffle = mae_forward(P, imgs64, noise64)
    loss.backward()
    self_check(P, imgs64, noise64, mask, ids_shuffle)

    expect = {"loss": f32(loss.reshape(1)), "pred": f32(pred), "mask": f32(mask),
              "latent": f32(latent), "target": f32(target),
              "ids_shuffle": ids_shuffle.numpy().astype(np.int64)}
    grads = {}
    for name, t in P.items():
        if name not in FIXED:
            grads[name] = f32(t.grad)
            expect[f"grad.{name}"] = grads[name]
    stepped = adamw_step(weights, grads)

    keep = int(((CFG["img_size"] // CFG["patch_size"]) ** 2) * (1 - CFG["mask_ratio"]))
    safetensors_io.save(os.path.join(OUT_DIR, "mae_tiny_weights.safetensors"), weights,
                        meta(seed=SEED, init="random N(0,std) per tensor, see gen_golden.py"))
    safetensors_io.save(os.path.join(OUT_DIR, "mae_tiny_batch.safetensors"),
                        {"images": imgs, "noise": noise}, meta(batch=BATCH))
    safetensors_io.save(os.path.join(OUT_DIR, "mae_tiny_expect.safetensors"), expect,
                        meta(batch=BATCH, keep=keep, reference="torch float64",
                             ln_eps=LN_EPS, pix_eps=PIX_EPS))
    adamw = {f"param.{n}": v.astype(np.float32) for n, v in stepped.items()}
    # The update itself, (new - old) in float64: a precise target for the optimiser's
    # arithmetic, which is ~lr in size and would hide in the weights' rounding.
    adamw.update({f"delta.{n}": (v - weights[n].astype(np.float64)).astype(np.float32)
                  for n, v in stepped.items()})
    safetensors_io.save(os.path.join(OUT_DIR, "adamw_expect.safetensors"), adamw,
                        meta(step=1, grads="grad.* of mae_tiny_expect.safetensors",
                             no_decay="ndim == 1 or name ends with .bias",
                             **{f"adamw_{k}": v for k, v in ADAMW.items()}))
    print(f"loss {loss.item():.6f}, {len(grads)} trainable tensors, "
          f"{sum(g.size for g in grads.values())} parameters, written to {OUT_DIR}")


if __name__ == "__main__":
    main()
