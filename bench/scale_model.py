#!/usr/bin/python3
"""The BSP step-time cost model of bench/scale.sh (docs/scaling.md says what it is).

  scale_model.py collect RUN                      points of RUN/points/*/ -> JSON (stdout)
  scale_model.py fit POINTS.json [--out FIT.json] fit, print measured vs predicted + projection
  scale_model.py project FIT.json                 the projection table alone
  scale_model.py selftest [POINTS.json]          recover known parameters from synthetic
                                                  points; fit POINTS.json if given

A point is one cluster run: W workers, S servers, a link rate (None = loopback), the
model's parameter count, the per-worker batch, and from the logs: per-phase means over
the steps after warm-up, the BSP tail (per step, the slowest worker's compute minus the
mean worker's) and the measured step time (scheduler progress records).

The phases are read generically from the worker records: every numeric field ending in
_s; forward/backward/compute fields are compute, data* fields are data, everything else
(push_pull, push, pull_wait, chunk_done, queue, ...) is communication. So a worker that
logs other phases (overlap, bf16 wire) is read the same way.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

WIRE_BYTES = 4  # bytes per parameter on the wire (fp32); --wire-bytes to change


def die(msg):
    sys.stderr.write("scale_model.py: %s\n" % msg)
    sys.exit(2)


# ---------------------------------------------------------------- collect


def read_jsonl(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                die("%s:%d: not a JSON line" % (path, n))
    return out


def load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        die("%s: cannot read %s (%s)" % (path, what, e.strerror))
    except ValueError as e:
        die("%s: %s is not JSON (%s)" % (path, what, e))


def load_points(path):
    doc = load_json(path, "the points file")
    pts = doc.get("points") if isinstance(doc, dict) else None
    if not isinstance(pts, list) or not pts:
        die("%s: no \"points\" list" % path)
    need = ("name", "rate", "workers", "servers", "params", "batch", "step_s", "data_s",
            "compute_s", "comm_s", "tail_s", "jitter")
    for i, pt in enumerate(pts):
        for k in need:
            if k not in pt:
                die("%s: point %d has no field %s" % (path, i, k))
        for k in need[2:]:
            if not isinstance(pt[k], (int, float)) or not math.isfinite(pt[k]) or pt[k] < 0:
                die("%s: point %d field %s = %r is not a finite number >= 0" % (path, i, k, pt[k]))
        if pt["workers"] < 1 or pt["servers"] < 1 or pt["step_s"] <= 0 or pt["params"] <= 0:
            die("%s: point %d: workers, servers, params and step_s must be positive" % (path, i))
        rate_bps(pt["rate"])
    return pts, doc.get("wire_bytes", WIRE_BYTES)


def phase_kind(name):
    if re.search(r"forward|backward|compute", name):
        return "compute"
    if name.startswith("data"):
        return "data"
    return "comm"


def ini_value(path, section, key):
    sec = None
    with open(path) as f:
        for line in f:
            line = line.split(";")[0].strip()
            if line.startswith("["):
                sec = line.strip("[]").strip()
            elif "=" in line and sec == section:
                k, v = line.split("=", 1)
                if k.strip() == key:
                    return v.strip()
    return None


def rate_bps(rate):
    if rate in (None, "loopback"):
        return None
    m = re.fullmatch(r"([0-9.]+)(k|m|g)bit", rate)
    if not m:
        die("link rate %r: expected NUMBER{k,m,g}bit" % rate)
    return float(m.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def point_of(d, params, gflop):
    done = os.path.join(d, "done")
    if not os.path.exists(done):
        return None
    meta = load_json(done, "a point's summary")
    warm = meta["warmup"]
    W, S = meta["workers"], meta["servers"]
    recs = {}  # version -> list of step records (one per worker)
    fields = set()
    for wf in sorted(glob.glob(os.path.join(d, "worker-*.jsonl"))):
        for r in read_jsonl(wf):
            if r.get("event") != "step" or r.get("version", 0) <= warm:
                continue
            recs.setdefault(r["version"], []).append(r)
            fields |= {k for k, v in r.items() if k.endswith("_s") and isinstance(v, (int, float))}
    full = {v: rs for v, rs in recs.items() if len(rs) == W}
    if len(full) < 3:
        die("%s: fewer than 3 steps after warm-up with a record from every worker" % d)
    phases = {f: float(np.mean([r.get(f, 0.0) for rs in full.values() for r in rs])) for f in sorted(fields)}
    comp = {v: np.array([sum(r.get(f, 0.0) for f in fields if phase_kind(f) == "compute") for r in rs])
            for v, rs in full.items()}
    tails = [c.max() - c.mean() for c in comp.values()]
    # spread of one worker's compute around the step's mean (pooled over steps), relative
    dev = np.concatenate([c - c.mean() for c in comp.values()])
    cmean = float(np.mean([c.mean() for c in comp.values()]))
    spread = float(np.sqrt(np.sum(dev ** 2) / max(1, dev.size - len(comp)))) / cmean if W > 1 else 0.0
    # one worker's own step-to-step spread (the only spread a lone worker has)
    series = np.array([c.mean() for _, c in sorted(comp.items())])
    jitter = float(np.std(series, ddof=1) / series.mean())
    samples = float(np.mean([r.get("samples", 0) for rs in full.values() for r in rs]))
    # step time: the scheduler's progress records after warm-up (wall clock of the cluster)
    prog = [r for r in read_jsonl(os.path.join(d, "scheduler.jsonl"))
            if r.get("event") == "progress" and "t" in r and "step" in r]
    prog = [r for r in prog if r["step"] >= warm]
    if len(prog) >= 2 and prog[-1]["step"] > prog[0]["step"]:
        step_s = (prog[-1]["t"] - prog[0]["t"]) / (prog[-1]["step"] - prog[0]["step"])
        step_src = "scheduler"
    else:
        step_s = float(np.mean([max(sum(r.get(f, 0.0) for f in fields) for r in rs) for rs in full.values()]))
        step_src = "worker phases"
    # the servers' own update time (their exit line), for comparison with the fit
    upd = []
    for sf in glob.glob(os.path.join(d, "server-*.log")):
        m = re.search(r"updates \(([0-9.]+) ms each", open(sf, errors="replace").read())
        if m:
            upd.append(float(m.group(1)) / 1e3)
    kinds = {}
    for f, v in phases.items():
        kinds[phase_kind(f)] = kinds.get(phase_kind(f), 0.0) + v
    return {
        "name": os.path.basename(d), "rate": meta["rate"], "workers": W, "servers": S,
        "params": params, "gflop_per_img": gflop, "batch": samples, "steps": len(full),
        "step_s": step_s, "step_src": step_src, "phases": phases,
        "data_s": kinds.get("data", 0.0), "compute_s": kinds.get("compute", 0.0),
        "comm_s": kinds.get("comm", 0.0), "tail_s": float(np.mean(tails)),
        "spread": spread, "jitter": jitter, "load1": meta.get("load1"),
        "server_update_s": float(np.mean(upd)) if upd else None,
        "cores": int(meta.get("cores", os.cpu_count())), "bg_cores": float(meta.get("bg_cores", 0.0)),
        "bg_known": "window_s" in meta,
        "ours_cores": meta.get("ours_cores"),
    }


def model_size(run):
    """params and GFLOP/img: the start record of a worker, or of the one-step standalone
    run bench/scale.sh makes in RUN/model/"""
    files = glob.glob(os.path.join(run, "points", "*", "worker-*.jsonl"))
    for f in [os.path.join(run, "model", "metrics.jsonl")] + files:
        if not os.path.exists(f):
            continue
        for r in read_jsonl(f):
            if r.get("event") == "start" and "params" in r:
                return int(r["params"]), float(r.get("gflop_per_img", 0.0))
    die("no start record with params in %s/model/metrics.jsonl or a worker's records" % run)


def cmd_collect(a):
    params, gflop = model_size(a.run)
    pts = []
    for d in sorted(glob.glob(os.path.join(a.run, "points", "*"))):
        p = point_of(d, params, gflop)
        if p:
            pts.append(p)
    if not pts:
        die("no finished points under %s/points" % a.run)
    json.dump({"wire_bytes": a.wire_bytes, "points": pts}, sys.stdout, indent=1)
    print()


# ---------------------------------------------------------------- model

GAUSS_MAX = {}


def expected_max(n):
    """E[max of n iid standard normals] (0 for n = 1), by numerical integration."""
    if n <= 1:
        return 0.0
    if n not in GAUSS_MAX:
        x = np.linspace(-9, 9, 20001)
        cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        GAUSS_MAX[n] = float(np.trapz(x * n * pdf * cdf ** (n - 1), x))
    return GAUSS_MAX[n]


def avail(p, pt):
    """cores this run had: the machine's cores minus what the other tenants took while the
    point's measured steps ran (bg_cores, measured by bench/scale.sh)"""
    return max(0.25, pt.get("cores", p["cores"]) - pt.get("bg_cores", 0.0))


def contention(n, cores):
    """the slowdown of n busy single-thread processes sharing `cores` cores"""
    return max(1.0, n / cores)


def comm_time(p, W, S, M, rate, cores):
    """push+pull without the straggler wait: t0 + max(link, cpu) + update. cpu: the bytes
    every process copies through the kernel and ZeroMQ (2 W M in all), at most one core's
    worth in parallel on this machine; link: the busier NIC of a worker (M each way) or a
    server (W M / S each way), push then pull; update: AdamW over a server's M / S"""
    cpu = 2.0 * W * M * p["k_cpu"] / min(1.0, cores)
    link = 0.0
    if rate:
        B = p["eta"] * rate / 8.0
        link = 2.0 * max(M / B, W * M / (S * B))
    return p["t0"] + max(link, cpu) + p["u"] * M / min(S, cores)


def predict(p, pt, wire_bytes):
    """step time of one point on the machine it was measured on, and its parts"""
    W, S, b = pt["workers"], pt["servers"], pt["batch"]
    M = pt["params"] * wire_bytes
    cores = avail(p, pt)
    k = contention(W, cores)
    comp = p["c_img"] * b * k
    data = p["d0"] + p["d_img"] * b * k
    tail = p["sigma"] * comp * expected_max(W)
    comm = comm_time(p, W, S, M, rate_bps(pt["rate"]), cores)
    return {"data": data, "compute": comp, "tail": tail, "comm": comm,
            "step": data + comp + tail + comm}


def lsq(A, y):
    """least squares with every coefficient >= 0 (a cost is never negative): the best
    unconstrained solution over the subsets of columns whose solution is feasible"""
    A, y = np.asarray(A, float), np.asarray(y, float)
    n = A.shape[1]
    best = (np.inf, np.zeros(n))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        x, *_ = np.linalg.lstsq(A[:, cols], y, rcond=None)
        if np.any(x < 0):
            continue
        full = np.zeros(n)
        full[cols] = x
        r = float(np.sum((A @ full - y) ** 2))
        if r < best[0]:
            best = (r, full)
    return best[1]


def fit(pts, wire_bytes):
    """Each term is fitted to its own measured phase (not to the step time, which is then
    predicted from the terms): compute -> c_img, cores; data -> d0, d_img; tail -> sigma;
    loopback comm -> t0, k_cpu, u; link-limited comm -> eta."""
    p = {"cores": float(np.median([pt.get("cores", os.cpu_count()) for pt in pts]))}
    # compute = c_img * b * max(1, W / (cores - bg)), c_img by least squares on relative
    # residuals (the points span 10x in time)
    x = np.array([pt["batch"] * contention(pt["workers"], avail(p, pt)) for pt in pts])
    y = np.array([pt["compute_s"] for pt in pts])
    p["c_img"] = float(np.sum(x / y) / np.sum(x * x / (y * y)))
    k = [contention(pt["workers"], avail(p, pt)) for pt in pts]
    d = lsq([[1.0, pt["batch"] * kk] for pt, kk in zip(pts, k)], [pt["data_s"] for pt in pts])
    p["d0"], p["d_img"] = float(d[0]), float(d[1])
    # tail = sigma * compute * E[max of W normals]: one coefficient over the W > 1 points
    multi = [pt for pt in pts if pt["workers"] > 1]
    if multi:
        x = np.array([pt["compute_s"] * expected_max(pt["workers"]) for pt in multi])
        y = np.array([pt["tail_s"] for pt in multi])
        p["sigma"] = float(x @ y / (x @ x))
    else:
        p["sigma"] = 0.0
    # a lone worker's step-to-step spread (on this shared machine mostly the other tenants)
    solo = [pt["jitter"] for pt in pts if pt["workers"] == 1 and pt["rate"] == "loopback"]
    p["sigma_solo"] = float(np.median(solo)) if solo else p["sigma"]
    # communication without the wait for the slowest worker (the mean worker waits tail)
    lo = [pt for pt in pts if pt["rate"] == "loopback"]
    if len(lo) < 3:
        die("the fit needs at least 3 loopback points")
    A = [[1.0, 2.0 * pt["workers"] * pt["params"] * wire_bytes / min(1.0, avail(p, pt)),
          pt["params"] * wire_bytes / min(pt["servers"], avail(p, pt))] for pt in lo]
    y = [pt["comm_s"] - pt["tail_s"] for pt in lo]
    t0, kc, u = (float(v) for v in lsq(A, y))
    p["t0"], p["k_cpu"], p["u"] = t0, max(kc, 0.0), max(u, 0.0)
    # the servers' own update time per byte of their range (their exit line), to compare
    logged = [pt["server_update_s"] * pt["servers"] / (pt["params"] * wire_bytes)
              for pt in lo if pt.get("server_update_s")]
    p["u_logged"] = float(np.median(logged)) if logged else float("nan")
    # link efficiency (TCP goodput / tbf rate): one coefficient over the link-limited points
    net = [pt for pt in pts if pt["rate"] != "loopback"]
    p["eta"] = 1.0
    if net:
        best = None
        for eta in np.arange(0.30, 2.001, 0.005):
            q = dict(p, eta=float(eta))
            r = sum((comm_time(q, pt["workers"], pt["servers"], pt["params"] * wire_bytes,
                               rate_bps(pt["rate"]), avail(q, pt))
                     - (pt["comm_s"] - pt["tail_s"])) ** 2 for pt in net)
            if best is None or r < best[0]:
                best = (r, float(eta))
        p["eta"] = best[1]
    return p


# ---------------------------------------------------------------- projection

# ViT at 224x224, patch 16 (197 tokens): parameters and training FLOPs per image
# (3 x forward; forward = 2 x MACs of every GEMM: 24 d^2 per token per block for qkv,
# proj and the 4x MLP, plus 4 N d per token per block for QK^T and AV)
VITS = {"ViT-T": (192, 12, 5.7e6), "ViT-S": (384, 12, 22.1e6), "ViT-B": (768, 12, 86.6e6)}


def vit_train_gflop(d, depth, tokens=197, patch_in=3 * 16 * 16):
    fwd = depth * tokens * (24 * d * d + 4 * tokens * d) + 2 * (tokens - 1) * patch_in * d
    return 3 * fwd / 1e9


def project(p, o, W=64, S=8, rates=(10e9, 25e9, 100e9)):
    """Dedicated nodes (one process each, no contention): step = compute + tail + exposed
    push+pull, push+pull = rtt + 2 max(M, W M / S) / (eta B) + u M / (S threads). Exposed:
    all of it (this data plane: push after backward), or what is left after overlapping
    backward (2/3 of compute: bucketed pushes as DDP/Horovod/BytePS do). Scaling
    efficiency, as Horovod and BytePS report it: throughput per worker over that of one
    worker training alone (compute only) = compute / step."""
    rows = []
    u = p["u"] / o.server_threads
    for name, (d, depth, n) in VITS.items():
        M = n * o.wire_bytes
        comp = vit_train_gflop(d, depth) * o.batch / o.node_gflops
        tail = o.sigma_node * comp * expected_max(W)
        hide = 2.0 / 3.0 * comp
        for rate in rates:
            B = o.eta * rate / 8.0
            pp = o.rtt + 2.0 * max(M / B, W * M / (S * B)) + u * M / S
            # servers so that push+pull <= compute: (2 W M / B + u M) / S <= comp - rtt;
            # none when a worker's own link is already too slow (2 M / B >= comp - rtt)
            room = comp - o.rtt - 2.0 * M / B
            need = math.ceil((2.0 * W * M / B + u * M) / (comp - o.rtt)) if room > 0 else None
            # ring allreduce: 2 (W-1)/W M each way per worker, 2 (W-1) latency hops
            ring = 2.0 * (W - 1) / W * M / B + (W - 1) * o.rtt
            rows.append({"model": name, "params": n, "gbit": rate / 1e9, "compute_s": comp,
                         "tail_s": tail, "pushpull_s": pp, "step_s": comp + tail + pp,
                         "efficiency": comp / (comp + tail + pp),
                         "efficiency_overlap": comp / (comp + tail + max(0.0, pp - hide)),
                         "servers_needed": need, "ring_allreduce_s": ring,
                         "ring_efficiency": comp / (comp + tail + ring),
                         "ring_efficiency_overlap": comp / (comp + tail + max(0.0, ring - hide))})
    return rows


# ---------------------------------------------------------------- report


def fmt_params(p, gflop):
    return ("cores of the machine %g, less each point's bg_cores; compute %.3f "
            "ms/img (%.1f GFLOP/s on one thread); data %.2f ms + %.4f ms/img; BSP tail sigma "
            "%.3f of compute (oversubscribed; a lone worker's step-to-step spread %.3f); "
            "push+pull: fixed %.2f ms, %.3f ms per MB copied (loopback, one core), server "
            "update %.3f ms per MB of its range (the servers log %.3f); link goodput %.2f of "
            "the tbf rate"
            % (p["cores"], 1e3 * p["c_img"], gflop / p["c_img"] if gflop else float("nan"),
               1e3 * p["d0"], 1e3 * p["d_img"], p["sigma"], p["sigma_solo"], 1e3 * p["t0"],
               1e9 * p["k_cpu"], 1e9 * p["u"], 1e9 * p.get("u_logged", float("nan")), p["eta"]))


def table(pts, p, wire_bytes):
    lines = ["| point | W | S | link | other tenants' cores | compute ms | tail ms (meas/model) "
             "| push+pull ms (meas/model) | step ms measured | predicted | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    errs = []
    for pt in pts:
        q = predict(p, pt, wire_bytes)
        e = 100.0 * (q["step"] - pt["step_s"]) / pt["step_s"]
        errs.append((pt, e))
        lines.append("| %s | %d | %d | %s | %.2f | %.1f | %.1f / %.1f | %.1f / %.1f | %.1f | %.1f | %+.1f%% |" % (
            pt["name"], pt["workers"], pt["servers"], pt["rate"], pt.get("bg_cores", 0.0), 1e3 * pt["compute_s"],
            1e3 * pt["tail_s"], 1e3 * q["tail"], 1e3 * (pt["comm_s"] - pt["tail_s"]),
            1e3 * q["comm"], 1e3 * pt["step_s"], 1e3 * q["step"], e))
    return lines, errs


def proj_lines(p, o, label, S=8):
    rows = project(p, o, S=S)
    out = ["projection, %s: 64 workers x %d servers, one process per node, %.0f GFLOP/s of "
           "training compute per worker node, batch %d per worker, round trip %.0f us, "
           "straggler sigma %.3f, server update at the fitted rate / %d threads, link goodput "
           "%.2f of the rate, %d-byte wire"
           % (label, S, o.node_gflops, o.batch, o.rtt * 1e6, o.sigma_node, o.server_threads,
              o.eta, o.wire_bytes),
           "| model | Gbit/s | compute ms | tail ms | push+pull ms | step ms | PS efficiency "
           "| PS, backward overlapped | servers for push+pull <= compute | ring allreduce ms "
           "| ring efficiency | ring, backward overlapped |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append("| %s | %g | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %s | %.1f | %.2f | %.2f |" % (
            r["model"], r["gbit"], 1e3 * r["compute_s"], 1e3 * r["tail_s"], 1e3 * r["pushpull_s"],
            1e3 * r["step_s"], r["efficiency"], r["efficiency_overlap"],
            r["servers_needed"] if r["servers_needed"] else "none: worker link too slow",
            1e3 * r["ring_allreduce_s"], r["ring_efficiency"], r["ring_efficiency_overlap"]))
    return out


def projections(p, o, gflop):
    """the CPU node (node_cores x the fitted per-thread rate) and a GPU-class node at 64 x 8;
    the GPU-class node again with a server on every worker machine (S = W, BytePS's layout)"""
    out = []
    per_thread = gflop / p["c_img"] if gflop else 60.0
    cpu = o.node_gflops or o.node_cores * per_thread
    for label, g, S in (("CPU node (%d cores x %.1f GFLOP/s fitted per thread)"
                         % (o.node_cores, per_thread), cpu, 8),
                        ("GPU-class node", o.gpu_gflops, 8),
                        ("GPU-class node, a server on every worker machine", o.gpu_gflops, 64)):
        o.node_gflops = g
        out += proj_lines(p, o, label, S)
    return out


def cmd_fit(a):
    pts, wb = load_points(a.points)
    p = fit(pts, wb)
    lines, errs = table(pts, p, wb)
    lo = [abs(e) for pt, e in errs if pt["rate"] == "loopback"]
    net = [abs(e) for pt, e in errs if pt["rate"] != "loopback"]
    print("model: %d params (%.2f MB on the wire), %.4f GFLOP/img" % (
        pts[0]["params"], pts[0]["params"] * wb / 1e6, pts[0]["gflop_per_img"]))
    print("fitted: " + fmt_params(p, pts[0].get("gflop_per_img", 0.0)))
    print("\n".join(lines))
    unknown = [pt["name"] for pt in pts if not pt.get("bg_known", True)]
    if unknown:
        print("note: no CPU window for %s (too few steps after warm-up for two snapshots): "
              "the other tenants' cores taken as 0 there" % ", ".join(unknown))
    ok = max(lo) <= 15.0
    print("loopback points (W in %s): max |error| %.1f%%, mean %.1f%% -> %s the 15%% goal" % (
        sorted({pt["workers"] for pt in pts if pt["rate"] == "loopback"}), max(lo), np.mean(lo),
        "within" if ok else "NOT within"))
    if net:
        print("link-limited points: max |error| %.1f%%, mean %.1f%%" % (max(net), np.mean(net)))
    # the same fit blind to the other tenants (every point given the whole machine)
    blind = [dict(pt, bg_cores=0.0) for pt in pts]
    _, eb = table(blind, fit(blind, wb), wb)
    print("the same model without the measured other tenants' cores: max |error| %.1f%% "
          "(loopback), %.1f%% (all points)" % (
              max(abs(e) for pt, e in eb if pt["rate"] == "loopback"), max(abs(e) for _, e in eb)))
    print("\n".join(projections(p, a, pts[0].get("gflop_per_img", 0.0))))
    if a.out:
        json.dump({"params": p, "wire_bytes": wb, "gflop_per_img": pts[0].get("gflop_per_img", 0.0), "max_err_loopback": max(lo),
                   "max_err_net": max(net) if net else None}, open(a.out, "w"), indent=1)


def cmd_project(a):
    doc = load_json(a.fit, "the fit file")
    p = doc.get("params") if isinstance(doc, dict) else None
    need = ("u", "c_img")
    if not isinstance(p, dict) or any(not isinstance(p.get(k), (int, float)) for k in need):
        die("%s: no \"params\" with %s" % (a.fit, ", ".join(need)))
    print("\n".join(projections(p, a, doc.get("gflop_per_img", 0.0))))


# ---------------------------------------------------------------- self-test


def synthetic(p, wire_bytes, rng, noise):
    """points made by the model itself from parameters p, with relative noise"""
    pts = []
    grid = [("loopback", W, S) for W in (1, 2, 4, 8) for S in (1, 2, 4)]
    grid += [(r, W, S) for r in ("1gbit", "10gbit") for W in (1, 2, 4, 8) for S in (1, 2)]
    for rate, W, S in grid:
        pt = {"name": "syn-%s-w%d-s%d" % (rate, W, S), "rate": rate, "workers": W, "servers": S,
              "params": 855120, "gflop_per_img": 0.1, "batch": 32.0,
              "cores": 2, "bg_cores": float(rng.uniform(0.0, 1.4))}
        q = predict(p, pt, wire_bytes)
        e = lambda: 1.0 + noise * rng.standard_normal()
        pt.update(compute_s=q["compute"] * e(), data_s=q["data"] * e(), tail_s=q["tail"] * e(),
                  jitter=p["sigma_solo"] * e() if W == 1 else 0.0)
        pt["comm_s"] = q["comm"] * e() + pt["tail_s"]
        pt["step_s"] = pt["data_s"] + pt["compute_s"] + pt["comm_s"]
        pts.append(pt)
    return pts


def cmd_selftest(a):
    truth = {"cores": 2.0, "c_img": 3.5e-3, "d0": 2e-4, "d_img": 1e-5, "sigma": 0.12,
             "sigma_solo": 0.04, "t0": 1.5e-3, "k_cpu": 0.4e-9, "u": 2.5e-9, "eta": 0.9}
    rng = np.random.default_rng(1)
    fails = []
    for noise, tol in ((0.0, 0.01), (0.02, 0.15)):
        p = fit(synthetic(truth, WIRE_BYTES, rng, noise), WIRE_BYTES)
        for k, v in truth.items():
            err = abs(p[k] - v) / abs(v)
            # the intercepts are small next to the terms beside them: looser under noise
            if err > (tol if noise == 0 or k not in ("t0", "d0") else 2.5 * tol):
                fails.append("noise %.2f: %s fitted %.4g, true %.4g (%.1f%% > %.0f%%)"
                             % (noise, k, p[k], v, 100 * err, 100 * tol))
    # the expected maximum of normals against known values (Tippett's tables)
    for n, ref in ((2, 0.5642), (4, 1.0294), (8, 1.4236), (64, 2.3437), (100, 2.5076)):
        if abs(expected_max(n) - ref) > 2e-3:
            fails.append("expected_max(%d) = %.4f, not %.4f" % (n, expected_max(n), ref))
    # the projection's ViT FLOP counts against the published ones (DeiT: 1.3/4.6/17.6 GMACs)
    for name, gmac in (("ViT-T", 1.26), ("ViT-S", 4.61), ("ViT-B", 17.58)):
        d, depth, _ = VITS[name]
        got = vit_train_gflop(d, depth) / 6
        if abs(got - gmac) / gmac > 0.05:
            fails.append("%s: %.2f GMAC forward, published %.2f" % (name, got, gmac))
    if a.points:
        pts, wb = load_points(a.points)
        p = fit(pts, wb)
        _, errs = table(pts, p, wb)
        worst = max(abs(e) for pt, e in errs if pt["rate"] == "loopback")
        print("sample %s: %d points, max loopback error %.1f%%" % (a.points, len(pts), worst))
        if not all(np.isfinite(v) for v in p.values()) or p["c_img"] <= 0:
            fails.append("sample fit: non-finite or non-positive parameters %s" % p)
        if worst > a.max_error:
            fails.append("sample fit: loopback error %.1f%% > %.1f%%" % (worst, a.max_error))
    for f in fails:
        print("FAIL " + f)
    if fails:
        sys.exit(1)
    print("selftest ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("run")
    c.add_argument("--wire-bytes", type=int, default=WIRE_BYTES)
    for name in ("fit", "project"):
        f = sub.add_parser(name)
        f.add_argument("points" if name == "fit" else "fit")
        if name == "fit":
            f.add_argument("--out")
        f.add_argument("--node-cores", type=int, default=32,
                       help="cores of a CPU worker node, each at the fitted per-thread rate")
        f.add_argument("--node-gflops", type=float, default=0.0,
                       help="training GFLOP/s of a CPU worker node (default: from --node-cores)")
        f.add_argument("--gpu-gflops", type=float, default=100e3,
                       help="training GFLOP/s of a GPU-class worker node")
        f.add_argument("--batch", type=int, default=64, help="images per worker per step")
        f.add_argument("--rtt", type=float, default=50e-6, help="one round trip, seconds")
        f.add_argument("--sigma-node", type=float, default=0.03,
                       help="step-to-step spread of a dedicated node's compute, relative")
        f.add_argument("--eta", type=float, default=0.94,
                       help="TCP goodput / link rate of a dedicated node (1448/1538 at MTU 1500)")
        f.add_argument("--server-threads", type=int, default=8,
                       help="update threads of a dedicated server node")
        f.add_argument("--wire-bytes", type=int, default=WIRE_BYTES,
                       help="bytes per parameter on the wire (4 fp32, 2 bf16)")
    s = sub.add_parser("selftest")
    s.add_argument("points", nargs="?")
    s.add_argument("--max-error", type=float, default=15.0)
    a = ap.parse_args()
    {"collect": cmd_collect, "fit": cmd_fit, "project": cmd_project, "selftest": cmd_selftest}[a.cmd](a)


if __name__ == "__main__":
    main()
