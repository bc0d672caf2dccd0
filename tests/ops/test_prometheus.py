#!/usr/bin/python3
"""test_prometheus: a real Prometheus server (Debian's `prometheus`) scrapes the
scheduler's /metrics of a running local cluster every second; its query API must return
the step, images/s and loss that the scheduler's JSON-lines progress records
(scheduler.jsonl) hold for that step, the per-worker phase counters of both workers, and
the pushed bytes. Loopback only; every process started here is killed by pid.
Exit 0 pass, 1 fail, 77 skip (no prometheus binary)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from opscluster import Cluster, fail, free_port, http_get  # noqa: E402

PROM = shutil.which("prometheus")
if not PROM:
    print("SKIP: prometheus is not installed (deploy/install-deps.sh --test)")
    sys.exit(77)


def query(pport, q, t=None):
    args = {"query": q}
    if t is not None:
        args["time"] = repr(t)
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (pport, urllib.parse.urlencode(args))
    body = json.loads(http_get(url)[1])
    if body.get("status") != "success":
        fail("query %s: %s" % (q, body))
    return body["data"]["result"]


def main():
    # long enough never to end before the checks (the test stops it): ~8 steps/s
    c = Cluster("prom", workers=2, steps=400, slow_ms=120)
    tmp = tempfile.mkdtemp(prefix="mimic-prom-")
    pport = free_port()
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: mimicps\n    metrics_path: /metrics\n"
                "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % c.port)
    plog = open(os.path.join(tmp, "prometheus.log"), "w")
    prom = None
    try:
        # Prometheus first: its start is the slow part; scrapes fail until the cluster is up
        prom = subprocess.Popen([PROM, "--config.file=" + cfg, "--storage.tsdb.path=" +
                                 os.path.join(tmp, "data"),
                                 "--web.listen-address=127.0.0.1:%d" % pport],
                                stdout=plog, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                if http_get("http://127.0.0.1:%d/-/ready" % pport)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or prom.poll() is not None:
                plog.flush()
                fail("prometheus did not become ready:\n" + open(plog.name).read()[-3000:])
            time.sleep(0.2)
        c.start()

        matched = 0
        seen_steps = set()
        deadline = time.time() + 40
        while matched < 3 and time.time() < deadline:
            time.sleep(1.1)
            r = query(pport, "mimicps_step")
            if not r:
                continue
            ts, step = r[0]["value"][0], float(r[0]["value"][1])
            if step <= 0 or step in seen_steps:
                continue
            # the same scrape's images/s and loss: the sample at that timestamp
            imgs = query(pport, "mimicps_images_per_second", ts)
            loss = query(pport, "mimicps_loss", ts)
            if not imgs or not loss:
                fail("no images/s or loss at the scrape of step %g" % step)
            imgs, loss = float(imgs[0]["value"][1]), float(loss[0]["value"][1])
            recs = [p for p in c.jsonl() if p.get("event") == "progress" and p["step"] == step]
            if not recs:
                fail("Prometheus has step %g, scheduler.jsonl has no progress record of it; "
                     "records: %s" % (step, [p["step"] for p in c.jsonl()
                                             if p.get("event") == "progress"]))
            # the JSON record is written with %.6g: agree to that precision
            ok = [p for p in recs if abs(p["img_per_s"] - imgs) <= 1e-5 * max(1, imgs) and
                  abs(p["loss"] - loss) <= 1e-5 * max(1, abs(loss))]
            if not ok:
                fail("step %g: Prometheus says %g img/s, loss %g; scheduler.jsonl says %s" %
                     (step, imgs, loss, [(p["img_per_s"], p["loss"]) for p in recs]))
            if imgs <= 0:
                fail("step %g: images/s %g is not positive" % (step, imgs))
            print("step %g: %g img/s, loss %.5f in Prometheus and in scheduler.jsonl" %
                  (step, imgs, loss))
            seen_steps.add(step)
            matched += 1
        if matched < 3:
            fail("only %d scrapes matched the JSON lines within the time; log:\n%s" %
                 (matched, c.logtext()))

        phases = query(pport, "mimicps_worker_phase_seconds_total")
        workers = {s["metric"]["worker"] for s in phases}
        names = {s["metric"]["phase"] for s in phases}
        if len(workers) != 2 or names != {"data", "forward", "backward", "push", "pull_wait"}:
            fail("phase counters: workers %s, phases %s" % (workers, names))
        back = [float(s["value"][1]) for s in phases if s["metric"]["phase"] == "backward"]
        if min(back) <= 0:
            fail("a worker's backward seconds are not positive: %s" % back)
        # the counters are the sums of the worker's step records: at one scrape, a
        # worker's data, forward and push seconds equal the sums over the first `steps`
        # records of its worker-<rank>.jsonl (records are written before each METRICS)
        ts = phases[0]["value"][0]
        steps = {s["metric"]["worker"]: int(float(s["value"][1]))
                 for s in query(pport, "mimicps_worker_steps_total", ts)}
        at = {(s["metric"]["worker"], s["metric"]["phase"]): (s["metric"]["rank"],
                                                              float(s["value"][1]))
              for s in query(pport, "mimicps_worker_phase_seconds_total", ts)}
        for (worker, phase), (rank, value) in sorted(at.items()):
            field = {"data": "data_s", "forward": "forward_s", "push": "push_pull_s"}.get(phase)
            if not field:
                continue  # backward holds the test hook's sleep; pull_wait unlogged parts
            path = os.path.join(c.out, "worker-%s.jsonl" % rank)
            recs = [json.loads(l) for l in open(path) if l.strip()]
            recs = [r for r in recs if r.get("event") == "step"][:steps[worker]]
            want = sum(r[field] for r in recs)
            if len(recs) != steps[worker] or abs(want - value) > 1e-5 * max(want, 1e-3) * 10:
                fail("worker %s (rank %s) %s: Prometheus %g s over %d steps, %s sums to %g "
                     "over %d records" % (worker, rank, phase, value, steps[worker], path,
                                          want, len(recs)))
        print("phase counters equal the sums of the workers' step records (%s)" %
              {w: n for w, n in steps.items()})
        pushed = query(pport, "mimicps_pushed_bytes_total")
        if not pushed or float(pushed[0]["value"][1]) <= 0:
            fail("no pushed bytes: %s" % pushed)
        live = query(pport, "mimicps_workers_live")
        if not live or float(live[0]["value"][1]) != 2:
            fail("workers_live: %s" % live)
        # the step only grows while the run goes: Prometheus saw it rise
        rise = query(pport, "delta(mimicps_step[30s])")
        if not rise or float(rise[0]["value"][1]) <= 0:
            fail("mimicps_step did not grow in Prometheus: %s" % rise)
        print("test_prometheus: passed")
    finally:
        if prom and prom.poll() is None:
            prom.terminate()
            try:
                prom.wait(10)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        plog.close()
        c.stop()
        bad = c.sanitizer_errors()
        if bad:
            fail("sanitizer reports in the cluster's processes:\n" + "".join(bad[:20]))
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(c.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
