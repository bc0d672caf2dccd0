#!/usr/bin/python3
"""test_livepage: headless Chromium (Debian's chromium + chromium-driver, driven by
python3-selenium) opens the scheduler's live page during a run of a local cluster with
one worker slowed (the MIMIC_TEST_SLOW_MS hook) and finds the loss chart with points,
the images/s and membership charts, and one stacked bar per worker whose phase times
are non-zero, the slowed worker's bar the longest; it fails when the page's data does
not change between two reads a few seconds apart. Loopback only; every process started
here is stopped (the driver quits its Chromium; the cluster is killed by pid).
Exit 0 pass, 1 fail, 77 skip (no chromium/chromedriver/selenium)."""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from opscluster import Cluster, fail  # noqa: E402

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:
    print("SKIP: python3-selenium is not installed (deploy/install-deps.sh --test)")
    sys.exit(77)

CHROME = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
if not CHROME or not DRIVER:
    print("SKIP: chromium / chromium-driver are not installed (deploy/install-deps.sh --test)")
    sys.exit(77)

SLOW_RANK = 1


# One script reads the DOM at once: the page redraws every second, so element handles
# taken one by one could go stale between two reads.
READ_JS = """
const q = s => document.querySelector(s), qa = s => Array.from(document.querySelectorAll(s));
const pts = id => parseInt(q(id).getAttribute('data-points') || '0');
return {
  updates: window.mimicUpdates,
  step: window.mimicState && window.mimicState.step,
  t: window.mimicState && window.mimicState.t,
  loss_points: pts('#loss-chart'),
  loss_lines: qa('#loss-chart polyline.series').length,
  imgs_points: pts('#imgs-chart'),
  members_lines: qa('#members-chart polyline.series').length,
  bars: qa('#phase-bars g.worker-bar').map(g => ({
    rank: parseInt(g.getAttribute('data-rank')),
    total: parseFloat(g.getAttribute('data-total')),
    phases: Object.fromEntries(Array.from(g.querySelectorAll('rect')).map(
      r => [r.getAttribute('data-phase'), parseFloat(r.getAttribute('data-seconds'))]))
  }))
};
"""


def read_page(d):
    """What the page shows now: its update count, the step it shows, the charts' points
    and lines, and per worker bar its rank, total and phase seconds."""
    return d.execute_script(READ_JS)


def main():
    c = Cluster("page", workers=2, steps=400, slow_ms=150, slow_rank=SLOW_RANK)
    d = None
    try:
        c.start()
        c.wait_state(lambda s: s["step"] >= 4 and all(w["steps"] > 0 for w in s["workers"])
                     and len(s["workers"]) == 2, 40, "both workers' reports")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROME
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-extensions", "--user-data-dir=" +
                  os.path.join(c.dir, "chrome")):
            opts.add_argument(a)
        d = webdriver.Chrome(service=Service(DRIVER, log_output=os.path.join(c.dir, "driver.log"))
                             if "log_output" in Service.__init__.__code__.co_varnames
                             else Service(DRIVER), options=opts)
        d.set_page_load_timeout(20)
        d.get(c.url("/"))
        deadline = time.time() + 20
        first = read_page(d)
        while (not first["updates"] or first["loss_points"] < 2 or len(first["bars"]) < 2) \
                and time.time() < deadline:
            time.sleep(0.3)
            first = read_page(d)
        if not first["updates"]:
            fail("the page never got data from /api/state")
        if first["loss_lines"] != 1 or first["loss_points"] < 2:
            fail("loss chart: %d line(s), %d point(s)" % (first["loss_lines"], first["loss_points"]))
        if first["imgs_points"] < 2 or first["members_lines"] != 2:
            fail("images/s chart %d points, membership chart %d lines" %
                 (first["imgs_points"], first["members_lines"]))
        if len(first["bars"]) != 2:
            fail("expected one bar per worker (2), found %d: %s" % (len(first["bars"]), first))
        for b in first["bars"]:
            if set(b["phases"]) != {"data", "forward", "backward", "push", "pull_wait"}:
                fail("bar of rank %d has phases %s" % (b["rank"], sorted(b["phases"])))
            if b["total"] <= 0 or b["phases"]["backward"] <= 0 or b["phases"]["forward"] <= 0:
                fail("bar of rank %d has zero phase times: %s" % (b["rank"], b))
        slow = [b for b in first["bars"] if b["rank"] == SLOW_RANK][0]
        fast = [b for b in first["bars"] if b["rank"] != SLOW_RANK][0]
        # the slowed worker computes (backward, where its sleep is counted) far longer;
        # under BSP the other waits for it in push (push+pull)
        if not slow["phases"]["backward"] > 2 * fast["phases"]["backward"]:
            fail("the slowed worker's bar does not stand out: slow %s, fast %s" % (slow, fast))
        print("page: step %s, %d loss points, bars %s" %
              (first["step"], first["loss_points"],
               [(b["rank"], round(b["total"], 4)) for b in first["bars"]]))

        time.sleep(3)
        second = read_page(d)
        if not (second["updates"] > first["updates"] and second["t"] > first["t"] and
                second["step"] > first["step"] and second["loss_points"] >= first["loss_points"]):
            fail("the page's data did not update: first %s, second %s" %
                 ({k: first[k] for k in ("updates", "t", "step", "loss_points")},
                  {k: second[k] for k in ("updates", "t", "step", "loss_points")}))
        print("page updated: step %s -> %s, %s -> %s polls" %
              (first["step"], second["step"], first["updates"], second["updates"]))
        print("test_livepage: passed")
    finally:
        if d is not None:
            d.quit()
        c.stop()
        bad = c.sanitizer_errors()
        if bad:
            fail("sanitizer reports in the cluster's processes:\n" + "".join(bad[:20]))
        shutil.rmtree(c.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
