"""faena side by side with what users run today, in one run on one machine.

Run through `bench/run`, which installs what this needs. Prints one table: each figure
as min / median / max over RUNS runs, with the ratio of the medians and the target.

- engine overhead: faena's no-op items (created, run, completed, durable) against
  Celery + Redis (acks_late) and BullMQ + Redis, the same item count, Redis with an
  append-only file synced every second; beside it faena's store path alone (no plugin,
  no dispatcher), the ceiling of its end-to-end figure;
- enqueue→start p50/p99 of single items sent at a steady rate, all three;
- browser flows: gsp orders per minute at concurrency 1, 2, 4, faena's plugin against
  the same flow in Python Playwright, the same Chromium, a fresh context per order, and
  the CPU of an order on each side: the whole machine's, Chromium's, the driver's
  (faena's engine; Python and Playwright's Node process) and the portal simulator's;
- feed fan-out p50/p99 to 100 and 1,000 WebSocket subscribers (faena);
- footprint of `faena serve`: RSS idle and while it runs 100,000 items, disk per
  100,000 finished items, start-up time with 1,000,000 items stored.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("FAENA_BENCH_RUNS", "3"))
ITEMS = int(os.environ.get("FAENA_BENCH_ITEMS", "20000"))
RATE = int(os.environ.get("FAENA_BENCH_LATENCY_RATE", "100"))
PY = os.environ.get("BENCH_PYTHON", sys.executable)
REDIS_PORT = 6391
PORTALS_PORT = 8391
FAENA_PORT = 8392


def log(msg):
    print(f"· {msg}", file=sys.stderr, flush=True)


def mmm(values):
    v = sorted(values)
    return v[0], statistics.median(v), v[-1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


# The admin key of the engine running now (its first start writes it to the data dir).
KEY = None


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if KEY:
        headers["authorization"] = f"Bearer {KEY}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def faena_benches():
    """faena's own benchmark rows (store, engine, feed, overload, gsp), as JSON lines."""
    out = tempfile.mktemp(suffix=".jsonl")
    env = {**os.environ, "FAENA_BENCH_JSON": out, "FAENA_BENCH_RUNS": str(RUNS),
           "FAENA_BENCH_LATENCY_RATE": str(RATE)}
    subprocess.run(["cargo", "bench", "--locked", "-q", "-p", "faena-tests", "--bench", "engine",
                    "--", "store", "engine", "fanout", "overload", "gsp"], cwd=ROOT, env=env, check=True,
                   stdout=sys.stderr)
    rows = {}
    with open(out) as f:
        for line in f:
            r = json.loads(line)
            rows[r["name"]] = r["values"]
    return rows


def queue_bench(cmd):
    results = []
    for i in range(RUNS):
        log(f"{cmd[0] if 'node' in cmd[0] else 'celery'} run {i + 1}/{RUNS}")
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {k: [r[k] for r in results] for k in results[0]}


def playwright_gsp():
    portals = subprocess.Popen([os.path.join(ROOT, "target/release/faena-portals"), str(PORTALS_PORT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{PORTALS_PORT}/gsp/login")
        out, cpu = {}, {}
        for c in (1, 2, 4):
            vals, cpus = [], []
            for i in range(RUNS):
                log(f"playwright gsp concurrency {c}, run {i + 1}/{RUNS}")
                p = subprocess.run([PY, os.path.join(ROOT, "bench/gsp_playwright.py"),
                                    "--portal", f"http://127.0.0.1:{PORTALS_PORT}",
                                    "--orders", str(8 * c), "--concurrency", str(c),
                                    "--offset", str(100 * (c * 10 + i)),
                                    "--portal-pid", str(portals.pid)],
                                   stdout=subprocess.PIPE, text=True, check=True)
                r = json.loads(p.stdout)
                vals.append(r["orders_per_min"])
                cpus.append(r["cpu_per_order_s"])
            out[c] = vals
            cpu[c] = {k: [x[k] * 1e3 for x in cpus] for k in cpus[0]}
        return out, cpu
    finally:
        portals.terminate()
        portals.wait()


def start_faena(data):
    p = subprocess.Popen([os.path.join(ROOT, "target/release/faena"), "serve", "--data-dir", data,
                          "--port", str(FAENA_PORT), "--no-browser"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    wait_http(f"http://127.0.0.1:{FAENA_PORT}/health", timeout=300)
    took = time.perf_counter() - t0
    global KEY
    with open(os.path.join(data, "admin.key")) as f:
        KEY = f.read().strip()
    return p, took


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def wait_job(job, sample=None):
    while True:
        j = http("GET", f"http://127.0.0.1:{FAENA_PORT}/api/v1/jobs/{job}")
        if sample:
            sample()
        if j["status"] == "completed":
            return j
        time.sleep(0.1)


def footprint():
    """RSS idle and while running ITEMS items, disk per 100k finished items, start-up
    with 1M stored."""
    idle, peak, disk, startup = [], [], [], []
    base = f"http://127.0.0.1:{FAENA_PORT}/api/v1"
    hundred_k = {"plugin": "noop", "items": [{"input": {"n": i}} for i in range(100_000)]}
    for run in range(RUNS):
        log(f"footprint run {run + 1}/{RUNS}")
        data = tempfile.mkdtemp(prefix="faena-bench-")
        p, _ = start_faena(data)
        time.sleep(2)
        idle.append(rss_mb(p.pid))
        top = [idle[-1]]
        j = http("POST", f"{base}/jobs", {"plugin": "noop", "items": [{"input": {"n": i}} for i in range(ITEMS)]})
        wait_job(j["id"], lambda: top.append(rss_mb(p.pid)))
        peak.append(max(top))
        time.sleep(1)
        before = du(os.path.join(data, "store"))
        j = http("POST", f"{base}/jobs", hundred_k)
        wait_job(j["id"])
        time.sleep(1)
        disk.append((du(os.path.join(data, "store")) - before) / 1e6)
        if run == 0:
            # Fill to 1,000,000 stored items (9 more jobs of 100,000, left pending).
            for _ in range(9):
                http("POST", f"{base}/jobs", {**hundred_k, "start": False})
            stop(p)
            for _ in range(RUNS):
                p, took = start_faena(data)
                startup.append(took)
                stop(p)
        else:
            stop(p)
        shutil.rmtree(data, ignore_errors=True)
    return idle, peak, disk, startup


def main():
    machine = subprocess.run(["sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; "
                              "free -g | awk '/Mem:/ {print $2}'"], capture_output=True, text=True).stdout.split("\n")
    redis_dir = tempfile.mkdtemp(prefix="faena-bench-redis-")
    redis = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                              "--dir", redis_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        log("faena benchmarks (store, engine, feed, gsp)")
        f = faena_benches()
        celery = queue_bench([PY, "bench/celery_noop.py", "--redis", str(REDIS_PORT), "--items", str(ITEMS),
                              "--rate", str(RATE), "--latency-items", "2000"])
        bull = queue_bench(["node", "bench/bullmq/noop.mjs", str(REDIS_PORT), str(ITEMS), str(RATE), "2000"])
        # The same with Redis acknowledging only what is on disk, as faena does: what
        # BullMQ costs where a job must survive a crash.
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "config", "set", "appendfsync", "always"],
                       check=True, stdout=subprocess.DEVNULL)
        bull_durable = queue_bench(["node", "bench/bullmq/noop.mjs", str(REDIS_PORT), str(ITEMS), str(RATE), "2000"])
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(redis_dir, ignore_errors=True)
    pw, pw_cpu = playwright_gsp()
    idle, peak, disk, startup = footprint()

    rows = []

    def add(name, unit, faena, other=None, other_name="", higher_better=True, target=""):
        fm = mmm(faena)
        if other:
            om = mmm(other)
            ratio = fm[1] / om[1] if higher_better else om[1] / fm[1]
            rows.append((name, unit, fm, f"{other_name} {om[0]:,.1f} / {om[1]:,.1f} / {om[2]:,.1f}", f"{ratio:,.1f}×", target))
        else:
            rows.append((name, unit, fm, "", "", target))

    eng = f"engine: noop plugin end to end (20k items, concurrency 32)"
    lat50 = next(k for k in f if k.startswith("engine: enqueue→start p50"))
    add(f"no-op items end to end, durable ({ITEMS:,})", "items/s", f[eng], celery["items_per_s"], "Celery", target="≥ 10× Celery")
    add("", "items/s", f[eng], bull["items_per_s"], "BullMQ", target="≥ 2× BullMQ")
    add("", "items/s", f[eng], bull_durable["items_per_s"], "BullMQ, fsync always")
    add("of which creating the job (all items at once)", "ms", f["engine: of which creating the job (20k items)"])
    add("CPU per no-op item, whole engine process", "µs", f["engine: CPU per item, whole process"])
    # The store alone, no plugin and no dispatcher: the ceiling of the row above.
    store = next(k for k in f if k.startswith("store: create→claim→complete"))
    add("store path alone, no plugin runs (50,000)", "items/s", f[store], bull["items_per_s"],
        "BullMQ", target="≥ 15,000")
    add(f"enqueue→start p50 ({RATE}/s)", "ms", f[lat50], celery["p50_ms"], "Celery", higher_better=False)
    add("", "ms", f[lat50], bull["p50_ms"], "BullMQ", higher_better=False)
    add(f"enqueue→start p99 ({RATE}/s)", "ms", f["engine: enqueue→start p99"], celery["p99_ms"], "Celery", higher_better=False, target="< 5 ms")
    add("", "ms", f["engine: enqueue→start p99"], bull["p99_ms"], "BullMQ", higher_better=False)
    add("", "ms", f["engine: enqueue→start p99"], bull_durable["p99_ms"], "BullMQ, fsync always", higher_better=False)
    add("disk: 4 KiB write + fdatasync p99 (the floor)", "ms", f["disk: 4 KiB write + fdatasync p99"],
        target="p99 within 2 ms of it")
    for c in (1, 2, 4):
        add(f"gsp orders of 3 products, concurrency {c}", "orders/min",
            f[f"gsp: orders of 3 products, concurrency {c}"], pw[c], "Playwright", target="≥ 1.5× Playwright")
    # Where an order's CPU goes on each side (ms per order, over the timed orders): the
    # machine's busy time, Chromium's share (the rest of the machine), the driver (faena's
    # engine; Python and Playwright's Node process) and the portal simulator.
    for c in (1, 2, 4):
        for part, theirs in (("whole machine", "machine"), ("Chromium", "browser"),
                             ("engine", "driver"), ("portal", "portal")):
            name = "driver (engine / Python + Node)" if part == "engine" else part
            add(f"gsp CPU per order, c{c}: {name}", "ms", f[f"gsp: CPU per order, {part}, concurrency {c}"],
                pw_cpu[c][theirs], "Playwright", higher_better=False)
    for n in (100, 1000):
        add(f"feed fan-out p50, {n:,} subscribers", "ms", f[f"feed: fan-out to {n} subscribers p50 (50 events/s)"])
        add(f"feed fan-out p99, {n:,} subscribers", "ms", f[f"feed: fan-out to {n} subscribers p99"], target="< 50 ms" if n == 1000 else "")
    add("no-op items/s with 1,000 browser-like feed clients / without", "ratio",
        f["overload: 1,000 browsers (compressed, nice 19) / none"], target="keep throughput")
    add("no-op items/s with 1,000 uncompressed feed clients / without", "ratio",
        f["overload: 1,000 uncompressed clients (nice 19) / none"])
    add("RSS idle (faena serve)", "MB", idle, celery["rss_idle_mb"], "Celery worker", higher_better=False, target="< 50 MB")
    add("", "MB", idle, bull["rss_idle_mb"], "BullMQ worker", higher_better=False)
    add(f"RSS peak running {ITEMS:,} no-op items", "MB", peak, celery["rss_peak_mb"], "Celery worker", higher_better=False)
    add("", "MB", peak, bull["rss_peak_mb"], "BullMQ worker", higher_better=False)
    add("disk per 100,000 finished items", "MB", disk)
    add("start-up with 1,000,000 items stored", "s", startup)

    print()
    print(f"faena side by side — {machine[0].strip()} cores,{machine[1].rstrip()}, {machine[2].strip()} GiB — "
          f"{RUNS} runs, min / median / max; ratio of medians (faena better when > 1×)")
    print()
    print(f"| {'figure':<42} | {'faena':>26} | {'other':>38} | {'ratio':>7} | {'target':<18} |")
    print(f"|{'-' * 44}|{'-' * 28}|{'-' * 40}|{'-' * 9}|{'-' * 20}|")
    for name, unit, fm, other, ratio, target in rows:
        faena = f"{fm[0]:,.1f} / {fm[1]:,.1f} / {fm[2]:,.1f} {unit}"
        print(f"| {name:<42} | {faena:>26} | {other:>38} | {ratio:>7} | {target:<18} |")


if __name__ == "__main__":
    main()
