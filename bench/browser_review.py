"""Benchmark: key press -> next review item visible, measured in a real browser (Debian chromium via Playwright).

Starts `streamlit run app.py` on a copy of a store (default: the shipped sample store, built if missing), signs one
or two annotators in (accounts are created in the copy), and presses verdict keys. Each press is timed inside the
page: from the keydown event (``performance.now()`` in a listener on window, capturing, ahead of the app's own) to
the first animation frame after the next item's marker appears in the DOM. The marker is written after the verdict
buttons, so "visible" means the new item and the buttons that judge it are both on screen (the button code is loaded
by then: the first item after sign-in is not timed). Afterwards the store is checked: one verdict per press, on
the item that was on screen, and no item judged by both annotators.

Target (issue 10): median < 300 ms, p95 < 600 ms on the shipped sample.

    .venv/bin/python bench/browser_review.py [--db FILE] [--items 40] [--annotators 1|2] [--both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
PASSWORD = "bench-password-1"

#: Installed in every page before the app loads: when a verdict key goes down, and when a new item is shown.
TIMING_JS = """
window.__press = null; window.__shown = []; window.__lastId = null;
// on window, capturing, registered before the app's key handler (which stops the event once it has pressed a button)
window.addEventListener('keydown', (e) => {
  if (['f', 't', 'u'].includes(e.key.toLowerCase())) window.__press = performance.now();
}, true);
new MutationObserver(() => {
  const el = document.querySelector('[data-review-item]');
  const id = el ? el.getAttribute('data-review-item') : null;
  if (id && id !== window.__lastId) {
    window.__lastId = id;
    requestAnimationFrame(() => window.__shown.push({id: id, t: performance.now()}));
  }
}).observe(document, {subtree: true, childList: true, attributes: true});
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def prepare_store(src: Path | None, workdir: Path, annotators: list[str]) -> Path:
    """A copy of the store with one account per annotator (and nothing else changed)."""
    from auditor import accounts
    from auditor.config import DEFAULT_APP_DB
    from auditor.store import open_store

    src = Path(src or DEFAULT_APP_DB)
    if not src.exists():
        from auditor.sample import build_sample_store

        print(f"building the sample store at {src} (once)", file=sys.stderr)
        build_sample_store(src)
    db = workdir / "bench.duckdb"
    shutil.copyfile(src, db)
    if Path(f"{src}.wal").exists():
        shutil.copyfile(f"{src}.wal", f"{db}.wal")
    con = open_store(db)
    try:
        for name in annotators:
            accounts.add_user(con, name, "annotator", password=PASSWORD)
    finally:
        con.close()
    return db


#: The floor: a Streamlit page with one keyed button in a fragment and the same marker, nothing else.
FLOOR_APP = """
import streamlit as st
ss = st.session_state
ss.setdefault("n", 0)
def step():
    ss["n"] += 1
@st.fragment
def item():
    st.button("Next", key=f"b{ss['n']}", shortcut="T", on_click=step)
    st.html(f'<span data-review-item="floor/{ss["n"]}#{ss["n"]}"></span>')
st.text_input("Name", key="name")
st.text_input("Password", key="password")
st.button("Sign in")
item()
"""


def start_app(db: Path | None, log: Path, script: Path = ROOT / "app.py") -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, AUDITOR_DB=str(db)) if db else dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port)],
        cwd=script.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"streamlit did not start:\n{log.read_text()}")
        time.sleep(0.2)


async def review(browser, url: str, name: str, items: int, key: str, pause_ms: int, ready: asyncio.Event,
                 start: asyncio.Event) -> list[dict]:
    """Sign ``name`` in, then press ``key`` ``items`` times; returns per press {id_before, id_after, ms}."""
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    await context.add_init_script(TIMING_JS)
    page = await context.new_page()
    page.set_default_timeout(60_000)
    try:
        await page.goto(url)
        await page.get_by_label("Name", exact=True).fill(name)
        await page.get_by_label("Password", exact=True).fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_function("window.__lastId !== null")
        await page.wait_for_timeout(1500)  # let the first page settle (prefetch, fonts) before timing
    finally:
        ready.set()  # a failed sign-in raises below, in gather(), instead of leaving the others waiting
    await start.wait()  # every annotator signed in: they press keys at the same time
    out = []
    for _ in range(items):
        before = await page.evaluate("window.__lastId")
        n_shown = await page.evaluate("window.__shown.length")
        await page.keyboard.press(key)
        await page.wait_for_function(f"window.__shown.length > {n_shown} && window.__lastId !== {before!r}")
        shown = await page.evaluate("window.__shown[window.__shown.length - 1]")
        press = await page.evaluate("window.__press")
        out.append({"before": before, "after": shown["id"], "ms": shown["t"] - press})
        await page.wait_for_timeout(pause_ms)  # an annotator reads the item before the next key
    await context.close()
    return out


async def run(url: str, names: list[str], items: int, pause_ms: int) -> dict[str, list[dict]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        start = asyncio.Event()
        ready = [asyncio.Event() for _ in names]
        keys = ["t", "f"]
        tasks = [asyncio.create_task(review(browser, url, n, items, keys[i % 2], pause_ms, ready[i], start))
                 for i, n in enumerate(names)]
        for r in ready:
            await r.wait()
        start.set()
        results = await asyncio.gather(*tasks)
        await browser.close()
    return dict(zip(names, results))


async def _histograms_first_render(url: str) -> tuple[float, float]:
    """Seconds from clicking "Histograms & bands" (a lead, signed in, 5 s on the Review page first, fresh server) to
    the page's band counts on screen, and to its first chart drawn."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = await browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)
        await page.goto(url)
        await page.get_by_label("Name", exact=True).fill("lead")
        await page.get_by_label("Password", exact=True).fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_selector("[data-review-item]", state="attached")
        await page.wait_for_timeout(5000)  # the lead looks at the review screen first
        t0 = time.perf_counter()
        await page.get_by_test_id("stSidebarNav").get_by_text("Histograms & bands").click()
        await page.get_by_text("What the bands mean", exact=False).first.wait_for()
        content = time.perf_counter() - t0
        await page.wait_for_selector(".js-plotly-plot .bars", state="attached")
        chart = time.perf_counter() - t0
        await browser.close()
    return content, chart


def histograms_first_render(src: Path | None) -> tuple[float, float, float]:
    """(seconds to the band counts, seconds to the first chart, load average): the Histograms page's first render in
    a fresh app."""
    with tempfile.TemporaryDirectory(prefix="auditor-browser-bench-") as tmp:
        db = prepare_store(src, Path(tmp), [])
        from auditor import accounts
        from auditor.store import open_store

        con = open_store(db)
        accounts.add_user(con, "lead", "lead", password=PASSWORD)
        con.close()
        proc, url = start_app(db, Path(tmp) / "streamlit.log")
        try:
            return (*asyncio.run(_histograms_first_render(url)), os.getloadavg()[0])
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def check_store(db: Path, results: dict[str, list[dict]]) -> list[str]:
    """Problems found: presses without exactly one verdict on the item shown, or items judged by two people."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    problems = []
    try:
        for name, presses in results.items():
            got = [f"{q}/{d}" for q, d in con.execute(
                "SELECT query_id, doc_id FROM verdicts WHERE annotator = ? AND verdict <> 'undo' ORDER BY event_id",
                [name]).fetchall()]
            shown = [p["before"].rsplit("#", 1)[0] for p in presses]  # the marker is "query/doc#serial"
            if got != shown:
                problems.append(f"{name}: {len(got)} verdicts for {len(shown)} presses, or on items not shown")
        both = con.execute(
            "SELECT count(*) FROM (SELECT query_id, doc_id FROM current_verdicts GROUP BY ALL "
            "HAVING count(DISTINCT annotator) > 1)").fetchone()[0]
        if both:
            problems.append(f"{both} items judged by two annotators")
    finally:
        con.close()
    return problems


def bench(src: Path | None, items: int, n_annotators: int, pause_ms: int = 1000, floor: bool = False) -> dict:
    names = [f"bench{i + 1}" for i in range(n_annotators)]
    with tempfile.TemporaryDirectory(prefix="auditor-browser-bench-") as tmp:
        if floor:
            db, script = None, Path(tmp) / "floor.py"
            script.write_text(FLOOR_APP)
        else:
            db, script = prepare_store(src, Path(tmp), names), ROOT / "app.py"
        proc, url = start_app(db, Path(tmp) / "streamlit.log", script)
        load_before = os.getloadavg()[0]
        try:
            results = asyncio.run(run(url, names, items, pause_ms))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        load_after = os.getloadavg()[0]
        problems = check_store(db, results) if db else []
    ms = [p["ms"] for presses in results.values() for p in presses]
    return {"annotators": n_annotators, "presses": len(ms), "median": statistics.median(ms), "p95": _pct(ms, 95),
            "max": max(ms), "load": (load_before, load_after), "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="store to copy (default: the sample store, built if missing)")
    ap.add_argument("--items", type=int, default=40, help="key presses per annotator (default 40)")
    ap.add_argument("--annotators", type=int, choices=[1, 2], default=1)
    ap.add_argument("--both", action="store_true", help="run with one annotator, then with two")
    ap.add_argument("--histograms", action="store_true",
                    help="also time the Histograms page's first render in a fresh app (target < 3 s)")
    ap.add_argument("--floor", action="store_true",
                    help="also time a one-button Streamlit page the same way: what this machine's load costs anyway")
    ap.add_argument("--pause", type=int, default=1000,
                    help="milliseconds between an item appearing and the next key (reading time; default 1000)")
    args = ap.parse_args()
    failed = False
    runs = [(n, False) for n in ([1, 2] if args.both else [args.annotators])]
    for n, floor in runs + ([(1, True)] if args.floor else []):
        r = bench(args.db, args.items, n, args.pause, floor=floor)
        what = "floor (one-button Streamlit page)" if floor else f"{n} annotator(s)"
        print(f"{what}, {r['presses']} key presses: key press -> next item visible median "
              f"{r['median']:.0f} ms, p95 {r['p95']:.0f} ms, max {r['max']:.0f} ms (target: median < 300, "
              f"p95 < 600); {args.pause} ms reading time per item; load average {r['load'][0]:.1f} -> {r['load'][1]:.1f} on {os.cpu_count()} CPUs")
        for p in r["problems"]:
            print(f"  PROBLEM: {p}")
            failed = True
    if args.histograms:
        content, chart, load = histograms_first_render(args.db)
        print(f"Histograms page, first visit in a fresh app: band counts and thresholds {content:.2f} s, first chart "
              f"{chart:.2f} s after the click (target < 3 s); load average {load:.1f} on {os.cpu_count()} CPUs")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
