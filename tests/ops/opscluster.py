"""A small local cluster for the operations tests (test_prometheus.py, test_livepage.py).

Starts one mimic-scheduler (with its HTTP endpoint on a free loopback port), one
mimic-pserver and W mimic-workers on loopback with the tiny model of
tests/test_cluster.c, on a synthetic IDX data set written here. Every process it starts
is remembered by pid and killed (SIGTERM, then SIGKILL) by stop(); nothing else is.
Environment: MIMIC_BUILD_DIR (ctest sets it; default ./build).
"""
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    """A loopback TCP port that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_idx(images, labels, n, side, seed=5):
    rnd = random.Random(seed)
    with open(images, "wb") as f, open(labels, "wb") as g:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", n, side, side))
        g.write(bytes([0, 0, 8, 1]) + struct.pack(">I", n))
        for i in range(n):
            c = [rnd.random() for _ in range(4)]
            f.write(bytes(int(127 + 120 * math.sin(c[0] * 6 + x * (0.2 + c[1] * 0.4)) *
                              math.cos(c[2] * 6 + y * (0.2 + c[3] * 0.4)))
                          for y in range(side) for x in range(side)))
            g.write(bytes([i % 10]))


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


class Cluster:
    def __init__(self, name, workers=2, steps=40, slow_ms=0, slow_rank=None, extra=()):
        self.build = os.environ.get("MIMIC_BUILD_DIR", "build")
        self.dir = tempfile.mkdtemp(prefix="mimic-%s-" % name)
        self.out = os.path.join(self.dir, "run")
        self.log = open(os.path.join(self.dir, "log.txt"), "w")
        self.procs = []
        self.port = free_port()
        self.W = workers
        img, lab = os.path.join(self.dir, "img.idx"), os.path.join(self.dir, "lab.idx")
        write_idx(img, lab, 256, 16)
        self.flags = [
            "--model.img_size=16", "--model.patch_size=4", "--model.embed_dim=32",
            "--model.depth=2", "--model.num_heads=2", "--mae.decoder_embed_dim=16",
            "--mae.decoder_depth=1", "--mae.decoder_num_heads=2", "--data.kind=idx",
            "--data.path=" + img, "--data.labels=" + lab, "--data.mean=0.5", "--data.std=0.25",
            "--train.warmup_steps=2", "--train.lr=2e-3", "--train.log_every=1",
            "--train.batch_size=16", "--train.steps=%d" % steps, "--train.out_dir=" + self.out,
            "--cluster.heartbeat_ms=100", "--cluster.dead_ms=3000", "--cluster.servers=1",
            "--cluster.workers=%d" % workers,
        ] + list(extra)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        if slow_ms:
            self.env["MIMIC_TEST_SLOW_MS"] = str(slow_ms)
            if slow_rank is not None:
                self.env["MIMIC_TEST_SLOW_RANK"] = str(slow_rank)

    def _spawn(self, binary, args):
        p = subprocess.Popen([os.path.join(self.build, binary)] + args, stdout=self.log,
                             stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(p)
        return p

    def start(self):
        epfile = os.path.join(self.dir, "endpoint")
        self.sched = self._spawn("scheduler/mimic-scheduler", self.flags + [
            "--metrics.port=%d" % self.port, "--endpoint-file", epfile])
        deadline = time.time() + 15
        while not (os.path.exists(epfile) and open(epfile).read().startswith("tcp://")):
            if time.time() > deadline or self.sched.poll() is not None:
                raise RuntimeError("scheduler wrote no endpoint file; log:\n" + self.logtext())
            time.sleep(0.05)
        ep = open(epfile).read().strip()
        self._spawn("pserver/mimic-pserver", self.flags + ["--scheduler", ep])
        for _ in range(self.W):
            self._spawn("worker/mimic-worker", self.flags + ["--scheduler", ep])
        return self

    def url(self, path=""):
        return "http://127.0.0.1:%d/%s" % (self.port, path.lstrip("/"))

    def state(self):
        return json.loads(http_get(self.url("api/state"))[1])

    def wait_state(self, cond, timeout, what):
        """Polls /api/state until cond(state) holds; returns that state."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.sched.poll() is not None:
                break
            try:
                last = self.state()
                if cond(last):
                    return last
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("timed out waiting for %s; last state %s; log:\n%s" %
                           (what, json.dumps(last)[:2000], self.logtext()))

    def jsonl(self):
        """The scheduler's JSON-lines records."""
        path = os.path.join(self.out, "scheduler.jsonl")
        if not os.path.exists(path):
            return []
        return [json.loads(l) for l in open(path) if l.strip()]

    def logtext(self):
        if not self.log.closed:
            self.log.flush()
        return open(self.log.name).read()[-6000:]

    def wait(self, timeout):
        """Waits for every process to end; the scheduler's exit code (None: still running)."""
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                return None
        return self.sched.returncode

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()

    def sanitizer_errors(self):
        """Lines of AddressSanitizer/UBSan/LeakSanitizer reports in the processes' log
        (a sanitizer build run by ctest; empty otherwise)."""
        keys = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
        return [l for l in open(self.log.name, errors="replace") if any(k in l for k in keys)]


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)
