"""The gsp order flow written with Python Playwright, step for step as the faena plugin
(plugins/gsp) does it, on the same Chromium, a fresh browser context per order.

    gsp_playwright.py --portal http://127.0.0.1:8090 --orders 8 --concurrency 2

Prints {"orders_per_min": ..., "cpu_per_order_s": {...}} as JSON: the pace, and the CPU
seconds an order took (the whole machine's, this driver's, the portal's given
--portal-pid, Chromium's as the rest). Orders are the benchmark's: 3 products each.
"""

import argparse
import asyncio
import json
import os
import resource
import time

from playwright.async_api import async_playwright

SUPERVISOR, PASSWORD = "SUP001", "gsp-demo"
PAGE_MS = 20_000


def order(i, products=3):
    rows = [(f"P{1 + (i + p) % 12:03}", 1 + p) for p in range(products)]
    return f"C{1 + i:05}", rows


async def view(page):
    return await page.evaluate("document.body ? (document.body.dataset.page || '') : ''")


async def arrive(page, expected):
    v = await view(page)
    if v not in expected:
        raise RuntimeError(f"expected {expected}, the portal shows {v}")


async def click_and_wait(page, selector):
    async with page.expect_navigation(timeout=PAGE_MS):
        await page.click(selector)


async def place(browser, base, consultant, rows):
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{base}/gsp/login")
        await arrive(page, ["login"])
        await page.fill("#supervisor", SUPERVISOR)
        await page.fill("#password", PASSWORD)
        await click_and_wait(page, "#login")
        await arrive(page, ["consultants"])
        await page.goto(f"{base}/gsp/consultants")
        await arrive(page, ["consultants"])
        await page.fill("#consultant-code", consultant)
        await click_and_wait(page, "#search")
        await arrive(page, ["consultants"])
        if await page.query_selector("#error"):
            raise RuntimeError(await page.inner_text("#error"))
        await click_and_wait(page, "#select-consultant")
        await arrive(page, ["cycle"])
        await click_and_wait(page, "#choose-cycle")
        await arrive(page, ["summary"])
        await click_and_wait(page, "#open-cart")
        await arrive(page, ["cart"])
        for code, quantity in rows:
            await page.fill("#product-code", code)
            await page.fill("#quantity", str(quantity))
            await click_and_wait(page, "#add")
            await arrive(page, ["cart"])
            if await page.query_selector("#error"):
                raise RuntimeError(await page.inner_text("#error"))
            if not await page.query_selector(f'#cart-lines tr[data-code="{code}"]'):
                raise RuntimeError(f"{code} is not in the cart")
        await page.fill("#note", f"playwright-{consultant}")
        await click_and_wait(page, "#confirm")
        await arrive(page, ["confirmation"])
        return (await page.inner_text("#order-id")).strip()
    finally:
        await context.close()


TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """Busy CPU seconds of the whole machine (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICKS


def process_s(pid):
    """User + system CPU seconds of one process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid):
    """The processes whose parent is `pid` (Playwright's Node driver, for this one)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry))
    return found


def cpu_mark(portal_pid):
    """CPU seconds so far: the machine, this script (the driver: Python and
    Playwright's Node process), the portal simulator."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    node = sum(process_s(c) for c in children(os.getpid()))
    return {"machine": machine_busy_s(), "driver": me.ru_utime + me.ru_stime + node,
            "portal": process_s(portal_pid) if portal_pid else 0.0}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--portal", required=True)
    ap.add_argument("--orders", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--portal-pid", type=int, default=0,
                    help="the portal simulator's process, to tell its CPU apart")
    a = ap.parse_args()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=a.chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--no-first-run"],
        )
        # One warm-up order, as the faena benchmark does (the launch is not counted).
        await place(browser, a.portal, *order(19_000))
        sem = asyncio.Semaphore(a.concurrency)

        async def one(i):
            async with sem:
                return await place(browser, a.portal, *order(a.offset + i))

        cpu0 = cpu_mark(a.portal_pid)
        t0 = time.perf_counter()
        ids = await asyncio.gather(*(one(i) for i in range(a.orders)))
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_mark(a.portal_pid)
        assert len(set(ids)) == a.orders, ids
        await browser.close()
    # CPU seconds per order; Chromium's share is what the machine spent besides the
    # driver and the portal.
    cpu = {k: (cpu1[k] - cpu0[k]) / a.orders for k in cpu0}
    cpu["browser"] = cpu["machine"] - cpu["driver"] - cpu["portal"]
    print(json.dumps({"orders_per_min": a.orders * 60 / elapsed, "cpu_per_order_s": cpu}))


asyncio.run(main())
