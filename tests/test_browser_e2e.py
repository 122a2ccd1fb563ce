"""End to end in a real browser: `streamlit run app.py` on a loopback port, Debian chromium driven by Playwright.

An annotator signs in by name, reviews items of the mined Cranfield sample with the keyboard (F, T, U), undoes the
last one (Z), and the store is checked afterwards. Data text containing HTML and Markdown must show as text. The test
saves a screenshot of each page to docs/ (shown in the README).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from conftest import MSMARCO, copy_store

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
EVIL = '<script>window.__pwned = 1</script> **bold** <img src=x onerror="window.__pwned = 2">'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                       "(apt-get install -y --no-install-recommends chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, mined_cranfield_path):
    """A copy of the mined sample with HTML/Markdown planted in the first queue item, served by `streamlit run`."""
    from auditor import review
    from auditor.store import open_store

    db = copy_store(mined_cranfield_path, tmp_path / "e2e.duckdb")
    con = open_store(db)
    queue = review.build_queue(con, annotator="e2e", limit=3)
    items = list(zip(queue["query_id"], queue["doc_id"]))
    con.execute("UPDATE documents SET text = text || ' ' || ? WHERE doc_id = ?", [EVIL, items[0][1]])
    con.close()

    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port)],
        cwd=ROOT, env=dict(os.environ, AUDITOR_DB=str(db)), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()}")
        time.sleep(0.2)
    yield {"url": url, "db": db, "items": items, "proc": proc}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=20)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=20)


def test_review_by_keyboard_undo_and_screenshots(server):
    from playwright.sync_api import expect, sync_playwright

    url, items = server["url"], server["items"]
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1440, "height": 1100},
        )
        page = browser.new_page()
        page.set_default_timeout(30_000)

        # A first request straight to a page's URL gets the app's navigation, not a bare page script.
        page.goto(f"{url}/histograms")
        expect(page.get_by_text("With these thresholds")).to_be_visible()
        nav = page.get_by_test_id("stSidebarNav")
        expect(nav.get_by_text("Histograms & bands")).to_be_visible()
        expect(nav.get_by_text("common")).to_have_count(0)
        page.wait_for_selector(".js-plotly-plot")
        page.wait_for_timeout(800)  # let Plotly finish drawing
        page.screenshot(path=str(DOCS / "histograms.png"))

        # Review: sign in by name, then keys only.
        page.goto(url)
        page.get_by_label("Your name").fill("e2e")
        page.get_by_role("button", name="Start reviewing").click()

        def shows(item: tuple[str, str]) -> None:
            expect(page.get_by_text(f"{item[1]} · found by", exact=False)).to_be_visible()
            expect(page.get_by_text(f"Query · {item[0]}", exact=True)).to_be_visible()

        shows(items[0])
        # the planted HTML / Markdown is shown as text and never runs
        expect(page.get_by_text("**bold**", exact=False)).to_be_visible()
        assert page.evaluate("window.__pwned") is None
        assert page.locator("strong", has_text="bold").count() == 0

        page.evaluate("document.activeElement && document.activeElement.blur()")  # keys go to the page
        page.keyboard.press("f")
        shows(items[1])
        page.keyboard.press("t")
        shows(items[2])
        page.keyboard.press("u")
        expect(page.get_by_text(f"{items[2][1]} · found by", exact=False)).to_have_count(0)
        page.keyboard.press("z")  # undo the "unsure": the item comes back
        shows(items[2])
        expect(page.get_by_text("2 by you")).to_be_visible()
        page.mouse.move(5, 1000)
        expect(page.get_by_test_id("stToast")).to_have_count(0, timeout=10_000)
        page.screenshot(path=str(DOCS / "review.png"))

        page.get_by_test_id("stSidebarNav").get_by_text("Load data").click()
        expect(page.get_by_text("1 · Ingest")).to_be_visible()
        expect(page.get_by_test_id("stFileUploaderDropzone")).to_be_visible()
        expect(page.get_by_label("Candidates per query")).to_be_visible()
        # upload a real FlagEmbedding file through the browser and ingest it
        page.locator("input[type=file]").set_input_files(str(MSMARCO))
        expect(page.get_by_text("train.jsonl", exact=False).first).to_be_visible()
        page.get_by_role("button", name="Ingest upload").click()
        expect(page.get_by_text("new candidates:       250", exact=False)).to_be_visible()
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "load.png"))

        page.get_by_test_id("stSidebarNav").get_by_text("Export").click()
        page.set_viewport_size({"width": 1440, "height": 1500})
        page.get_by_role("button", name="Prepare export").click()
        expect(page.get_by_text("Download JSONL")).to_be_visible()
        expect(page.get_by_text("False negatives per band", exact=False)).to_be_visible()
        page.mouse.move(5, 1400)
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "export.png"))
        browser.close()

    _stop(server["proc"])  # the store is one process's file while the app runs; check it after
    con = duckdb.connect(str(server["db"]), read_only=True)
    events = con.execute(
        "SELECT query_id, doc_id, verdict, annotator, queue_mode FROM verdicts ORDER BY event_id"
    ).fetchall()
    current = con.execute("SELECT query_id, doc_id, verdict FROM current_verdicts ORDER BY event_id").fetchall()
    uploaded = con.execute("SELECT count(*) FROM queries WHERE dataset = 'train'").fetchone()[0]
    con.close()
    assert uploaded == 10  # the 10 MS MARCO queries uploaded through the Load page
    assert events == [
        (*items[0], "false_negative", "e2e", "export"),
        (*items[1], "true_negative", "e2e", "export"),
        (*items[2], "unsure", "e2e", "export"),
        (*items[2], "undo", "e2e", None),
    ]
    assert current == [(*items[0], "false_negative"), (*items[1], "true_negative")]
    for name in ("review", "histograms", "load", "export"):
        assert (DOCS / f"{name}.png").stat().st_size > 20_000


def test_report_opens_offline_in_the_browser(tmp_path, mined_cranfield_path):
    """`auditor stats --report` writes one self-contained file: it renders its Plotly figures with no network."""
    from playwright.sync_api import sync_playwright

    from auditor import review
    from auditor.store import open_store

    db = copy_store(mined_cranfield_path, tmp_path / "report.duckdb")
    con = open_store(db)
    queue = review.build_queue(con, annotator="lead", limit=4)
    for i, (q, d) in enumerate(zip(queue["query_id"], queue["doc_id"])):
        review.record_verdict(con, query_id=q, doc_id=d, annotator="lead",
                              verdict="false_negative" if i % 2 else "true_negative", queue_mode="risk")
    con.close()
    report = tmp_path / "report.html"
    out = subprocess.run([sys.executable, "-m", "auditor", "stats", "--db", str(db), "--report", str(report)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True, offline=True,
        )
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(report.as_uri())
        page.wait_for_selector(".js-plotly-plot")
        assert page.locator(".js-plotly-plot").count() >= 3
        assert page.get_by_text("false negative", exact=False).count() > 0
        browser.close()
    assert errors == []
    assert all(u.startswith("file:") or u.startswith("data:") for u in requests), requests
