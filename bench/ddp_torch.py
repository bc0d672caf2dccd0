#!/usr/bin/python3
"""The PyTorch peer of a local 2-worker cluster: the MAE training step of
bench_mae_torch.py under torch.distributed DistributedDataParallel with the gloo
backend, RANKS processes on loopback, each pinned to its own core (taskset -c r) with
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 and torch.set_num_threads(1): the fair
multi-process peer of ../shared/BENCH.md. --autocast runs each rank's forward under
torch.autocast("cpu", dtype=torch.bfloat16). --batch is the total batch (split evenly).
Prints torch_ddp_img_per_s: total images/s, the median of N windows after warm-up,
each window timed between barriers on rank 0.

    /usr/bin/python3 bench/ddp_torch.py --img_size 32 ... --batch 128 [--autocast]
"""

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time

KEYS = ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads",
        "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def args():
    ap = argparse.ArgumentParser()
    for k in KEYS:
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--autocast", action="store_true")
    ap.add_argument("--rank", type=int, default=-1)  # set by the launcher
    ap.add_argument("--port", type=int, default=0)
    return ap.parse_args()


def rank_main(a):
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn

    sys.dont_write_bytecode = True
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests", "golden"))
    import gen_golden as G

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(a.port)
    dist.init_process_group("gloo", rank=a.rank, world_size=a.ranks)
    for k in KEYS:
        G.CFG[k] = getattr(a, k)
    weights = G.make_weights(np.random.default_rng(0))

    class MAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.names = [k for k in weights if k not in G.FIXED]
            self.params = nn.ParameterList(
                [nn.Parameter(torch.from_numpy(weights[k])) for k in self.names])
            self.fixed = {k: torch.from_numpy(weights[k]) for k in G.FIXED}

        def forward(self, imgs, noise):
            P = dict(zip(self.names, self.params))
            P.update(self.fixed)
            return G.mae_forward(P, imgs, noise)[0]

    model = nn.parallel.DistributedDataParallel(MAE())
    named = list(zip(model.module.names, model.module.params))
    decay = [p for k, p in named if p.ndim > 1 and not k.endswith(".bias")]
    no_decay = [p for k, p in named if not (p.ndim > 1 and not k.endswith(".bias"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    B = a.batch // a.ranks
    L = (a.img_size // a.patch_size) ** 2
    torch.manual_seed(a.rank)
    imgs = torch.randn(B, a.in_chans, a.img_size, a.img_size)

    def autocast():
        if a.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    ips = []
    for w in range(-1, a.windows):
        n = a.warmup if w < 0 else a.steps
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            noise = torch.rand(B, L)
            with autocast():
                loss = model(imgs, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        dist.barrier()
        if w >= 0:
            ips.append(a.ranks * B * n / (time.perf_counter() - t0))
    if a.rank == 0:
        print(f"torch_version={torch.__version__}")
        print(f"torch_ddp_ranks={a.ranks}")
        print(f"torch_precision={'bf16-autocast' if a.autocast else 'fp32'}")
        print(f"torch_ddp_img_per_s={statistics.median(ips):.2f}")
        print(f"torch_final_loss={loss.item():.4f}")
    dist.destroy_process_group()


def launch(a):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ncpu = os.cpu_count() or 1
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    procs = []
    for r in range(a.ranks):
        cmd = ["taskset", "-c", str(r % ncpu), sys.executable, os.path.abspath(__file__),
               "--rank", str(r), "--port", str(port)] + sys.argv[1:]
        procs.append(subprocess.Popen(cmd, env=env))
    rc = 0
    for p in procs:
        rc = p.wait() or rc
    return rc


if __name__ == "__main__":
    a = args()
    sys.exit(rank_main(a) if a.rank >= 0 else launch(a))
