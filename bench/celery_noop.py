"""No-op tasks through Celery with Redis, the way teams run it for reliability
(acks_late, prefetch 1, a prefork worker per core), measured like faena's engine bench:

- throughput: N tasks sent, run and acknowledged; items/s from the first send to the
  last completion;
- enqueue→start: single tasks sent at a steady rate, p50/p99 of start - send.

    celery_noop.py --redis 6391 --items 20000 --rate 500 --latency-items 2000

Prints one JSON object. The worker is started and stopped here.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import redis


def app_module(dirname, port):
    path = os.path.join(dirname, "noop_app.py")
    with open(path, "w") as f:
        f.write(f'''
import time
import redis
from celery import Celery

app = Celery("noop", broker="redis://127.0.0.1:{port}/0")
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1,
                task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
r = redis.Redis(port={port})

@app.task(name="noop")
def noop(n, sent=None):
    if sent is not None:
        r.rpush("starts", f"{{time.time() - sent}}")
    r.incr("done")
    return n
''')
    return path


def rss_mb(pid):
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", type=int, required=True)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--latency-items", type=int, default=2000)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    app_module(d, a.redis)
    sys.path.insert(0, d)
    import noop_app  # noqa: E402

    r = redis.Redis(port=a.redis)
    r.flushall()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "noop_app", "worker", "--loglevel=WARNING",
         f"--concurrency={os.cpu_count()}", "--pool=prefork", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        cwd=d, env={**os.environ, "PYTHONPATH": d},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait for the worker: one task through.
        noop_app.noop.delay(-1)
        deadline = time.time() + 60
        while int(r.get("done") or 0) < 1:
            if time.time() > deadline:
                raise SystemExit("the celery worker did not start")
            time.sleep(0.05)
        idle_rss = rss_mb(worker.pid)
        r.set("done", 0)

        t0 = time.perf_counter()
        for i in range(a.items):
            noop_app.noop.delay(i)
        peak = 0.0
        while int(r.get("done") or 0) < a.items:
            peak = max(peak, rss_mb(worker.pid))
            time.sleep(0.05)
        items_per_s = a.items / (time.perf_counter() - t0)

        r.set("done", 0)
        r.delete("starts")
        every = 1.0 / a.rate
        next_at = time.time()
        for i in range(a.latency_items):
            now = time.time()
            if next_at > now:
                time.sleep(next_at - now)
            next_at += every
            noop_app.noop.delay(i, time.time())
        while int(r.get("done") or 0) < a.latency_items:
            time.sleep(0.05)
        lat = sorted(float(x) * 1000 for x in r.lrange("starts", 0, -1))
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        print(json.dumps({"items_per_s": items_per_s, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                          "rss_idle_mb": idle_rss, "rss_peak_mb": peak}))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


if __name__ == "__main__":
    main()
