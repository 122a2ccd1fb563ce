"""End to end in a real browser: `streamlit run app.py` on a loopback port, Debian chromium driven by Playwright.

A store with accounts (an admin, a lead, two annotators) serves the team: an anonymous visitor sees only the sign-in
form on every URL; each role sees its pages; an annotator reviews with the keyboard at 1366x768 (layout checked by
element positions), keys in quick succession never judge an item that was not on screen, the first key after
sign-in counts, keys never type into a field after Esc, a key held down judges once, a reload keeps the identity
and the skips, a key pressed while the buttons' code is still loading acts once they are drawn; two annotators in
two browser contexts never get the same item. Data text containing HTML and Markdown must show as text. The tests
save the screenshots in docs/.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
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
PASSWORD = "team-password-1"
USERS = {"ada": "admin", "lee": "lead", "ann": "annotator", "bob": "annotator"}
#: URL of each page (st.Page's url_path from the file name; the default page is the root).
URLS = {"review": "", "histograms": "histograms", "load": "load", "export": "export", "team": "team"}
ITEM = "[data-review-item]"
VERDICT_BUTTONS = '[class*="st-key-v_"] button'

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
    """A copy of the mined sample with accounts, HTML/Markdown planted in the first queue items, served by
    `streamlit run`. ``stop()`` ends it (the store is one process's file: read it after)."""
    from auditor import accounts, review
    from auditor.store import open_store

    db = copy_store(mined_cranfield_path, tmp_path / "e2e.duckdb")
    con = open_store(db)
    for name, role in USERS.items():
        accounts.add_user(con, name, role, password=PASSWORD)
    head = review.build_queue(con, limit=12)
    for doc_id in head["doc_id"]:
        con.execute("UPDATE documents SET text = text || ' ' || ? WHERE doc_id = ?", [EVIL, doc_id])
    con.close()

    with _serve(tmp_path, db) as served:
        yield served


@contextmanager
def _serve(tmp_path: Path, db: Path):
    """`streamlit run app.py` on ``db`` at a free loopback port; yields url, db and stop() (which ends it)."""
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")
    # A test that times out asks the server for its threads' stacks (SIGUSR1 -> faulthandler, into streamlit.log).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1)\n")
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port)],
        cwd=ROOT, env=dict(os.environ, AUDITOR_DB=str(db), PYTHONPATH=path), stdout=log, stderr=subprocess.STDOUT,
    )
    _SERVERS[:] = [(proc, tmp_path / "streamlit.log")]
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

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)

    try:
        yield {"url": url, "db": db, "stop": stop}
    finally:
        stop()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


#: Logged in every page: each key's time (with whether the app's key handler was installed and which verdict buttons
#: were drawn); when the texts of each item appeared (its data-item span, "query/doc#serial"); when the first verdict
#: button box of each serial appeared (a key acts on that item from then on: the app's handler waits for the button
#: inside if Streamlit is still loading its code; Streamlit draws an st.html body one render after the buttons of
#: the same run, so a key can press the next item's button a moment before its texts show); the clicks made by code
#: (the app's key handler); and what the page sent to the server.
LOG_JS = """
window.__keys = []; window.__shown = []; window.__last = null; window.__armed = {}; window.__sent = [];
window.__clicks = [];
const keyOf = (el) => {  // the Streamlit widget key of the box an element is in
  const box = el && el.closest('[class*="st-key-"]');
  return box ? (box.className.match(/st-key-(\\S+)/) || [])[1] : null;
};
// on window, capturing, registered before the app's own key handler (init scripts run first): every key is logged,
// with whether the app's key handler was installed by then and which verdict buttons were drawn
window.addEventListener('keydown', (e) => window.__keys.push({key: e.key, t: performance.now(),
  target: e.target && e.target.tagName, active: document.activeElement && document.activeElement.tagName,
  handler: !!window.__auditorKeys,
  buttons: Array.from(document.querySelectorAll(%r)).map((b) => keyOf(b) + (b.disabled ? ':disabled' : ''))}), true);
// every click made by code (the app's key handler clicks the button of a key), with the button's key and state
const click = HTMLElement.prototype.click;
HTMLElement.prototype.click = function () {
  window.__clicks.push({t: performance.now(), key: keyOf(this), disabled: !!this.disabled,
    connected: this.isConnected});
  return click.call(this);
};
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  window.__sent.push({t: performance.now(), bytes: data.byteLength || data.length || data.size});
  return send.call(this, data);
};
new MutationObserver(() => {
  const now = performance.now();
  for (const b of document.querySelectorAll('[class*="st-key-v_"]')) {
    const m = b.className.match(/st-key-v_(?:false_negative|true_negative|unsure|skip|undo)_(\\d+)/);
    if (m && !(m[1] in window.__armed)) window.__armed[m[1]] = now;
  }
  const el = document.querySelector('[data-item]');
  const id = el ? el.getAttribute('data-item') : null;
  if (id && id !== window.__last) { window.__last = id; window.__shown.push({id: id, t: now}); }
}).observe(document, {subtree: true, childList: true, attributes: true});
""" % VERDICT_BUTTONS

VERDICT_OF_KEY = {"f": "false_negative", "t": "true_negative", "u": "unsure"}


def _browser_log(page) -> dict:
    return page.evaluate("({keys: window.__keys, shown: window.__shown, armed: window.__armed})")


def _check_bursts(log: dict, events: list[tuple], bursts: list[str]) -> None:
    """Verdict events of key bursts (keys in quick succession, then a pause) against what the browser showed.

    Which key of a burst judges which item depends on timing (the next item may be drawn between two keys 60 ms
    apart, or not), so nothing is inferred from the page's timing. Instead: the first key of a burst judges the item
    on screen; a later key judges the next item, or nothing; a key judges an item only if that item's verdict
    buttons were drawn before the key went down (its texts come with them, one render later); items are judged in
    the order they were shown, each once; nothing else is judged."""
    shown: list[str] = []  # items in the order shown (an item drawn again under a new serial counts once)
    for s in log["shown"]:
        item = s["id"].split("#")[0]
        if not shown or shown[-1] != item:
            shown.append(item)
    serials: dict[str, list[str]] = {}  # item -> the serials it was shown with
    for s in log["shown"]:
        item, serial = s["id"].split("#")
        serials.setdefault(item, []).append(serial)
    keys = [k for k in log["keys"] if k["key"] in VERDICT_OF_KEY]
    assert "".join(k["key"] for k in keys) == "".join(bursts), log
    items = ["/".join(e[:2]) for e in events]
    assert items and items[0] in shown, (events, log)
    pos, at = shown.index(items[0]), 0
    for burst in bursts:
        for j, key in enumerate(burst):
            k = keys.pop(0)
            hit = at < len(events) and events[at][2] == VERDICT_OF_KEY[key] and pos < len(shown) \
                and items[at] == shown[pos]
            if not hit:
                assert j > 0, f"the first key of burst {burst!r} did not judge {shown[pos:pos + 1]}: {events} {log}"
                continue
            armed = min(log["armed"][s] for s in serials[items[at]] if s in log["armed"])
            assert armed <= k["t"], f"{items[at]} judged by a key pressed before its buttons were drawn: {log}"
            at, pos = at + 1, pos + 1
    assert at == len(events), f"judged more than the keys did: {events} {log}"


@contextmanager
def _page(browser, width: int = 1366, height: int = 768):
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(LOG_JS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


def _sign_in(page, url: str, name: str, *, enter: bool = False) -> None:
    page.goto(url)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    if enter:
        page.get_by_label("Password", exact=True).press("Enter")
    else:
        page.get_by_role("button", name="Sign in").click()


def _item(page) -> str:
    """The item on screen, as the page marks it: "query/doc#serial"."""
    page.wait_for_selector(ITEM, state="attached")
    return page.locator(ITEM).get_attribute("data-review-item")


def _next_item(page, before: str) -> str:
    try:
        page.wait_for_function(
            "b => { const e = document.querySelector('[data-review-item]'); "
            "return e && e.getAttribute('data-review-item') !== b; }", arg=before)
    except Exception:
        _explain_timeout(page)
        raise
    return _item(page)


#: The running server and its log, for _explain_timeout.
_SERVERS: list = []


def _explain_timeout(page) -> None:
    """Print what the browser and the server were doing when an item did not come (pytest shows it on failure)."""
    import signal

    try:
        print("browser log:", page.evaluate("({keys: window.__keys, shown: window.__shown, armed: window.__armed, "
                                            "sent: window.__sent, clicks: window.__clicks})"))
        print("page text:", page.locator("body").inner_text()[:3000])
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        print("page unreadable:", exc)
    for proc, log in _SERVERS:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(1)
        print("server log:", log.read_text()[-20000:])


def _ids(marker: str) -> tuple[str, str]:
    q, d = marker.rsplit("#", 1)[0].split("/", 1)
    return q, d


def _verdicts(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT query_id, doc_id, verdict, annotator, note FROM verdicts ORDER BY event_id").fetchall()
    finally:
        con.close()


def test_anonymous_visitors_see_only_the_sign_in_form_and_roles_see_their_pages(server, browser):
    url = server["url"]
    with _page(browser) as page:
        for name, path in URLS.items():
            page.goto(f"{url}/{path}")
            page.get_by_label("Password", exact=True).wait_for()
            page.get_by_role("button", name="Sign in").wait_for()  # the whole form (drawn after the fields)
            page.wait_for_timeout(300)  # Streamlit's "Page not found" dialog comes up after the page
            assert page.get_by_text("Page not found").count() == 0, name
            assert page.get_by_test_id("stSidebarNav").count() == 0  # no navigation, no page names
            assert page.locator(ITEM).count() == 0 and page.locator(".js-plotly-plot").count() == 0
            assert page.get_by_text("What the bands mean").count() == 0 and page.locator("input[type=file]").count() == 0
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "signin.png"))
    expect = {"ann": {"Review"}, "lee": {"Review", "Histograms & bands", "Export", "Team"},
              "ada": {"Review", "Histograms & bands", "Load data", "Export", "Team"}}
    titles = {"histograms": "Histograms & bands", "load": "Load data", "export": "Export", "team": "Team"}
    for name, pages in expect.items():
        with _page(browser) as page:
            _sign_in(page, url, name)
            _item(page)
            nav = page.get_by_test_id("stSidebarNav")
            shown = {t.strip().split("\n")[-1] for t in nav.locator("a").all_inner_texts()}  # icon, then title
            assert shown == (pages if len(pages) > 1 else set()), name  # one page: Streamlit shows no menu
            for path, title in titles.items():  # typing another page's URL
                page.goto(f"{url}/{path}")
                page.wait_for_selector(ITEM if title not in pages else "h1", state="attached")
                has = page.get_by_role("heading", name=title, exact=True).count() > 0
                assert has == (title in pages), (name, path)


def test_review_by_keyboard_at_1366x768(server, browser):
    url, db = server["url"], server["db"]
    with _page(browser) as page:
        _sign_in(page, url, "ann", enter=True)  # Enter in the password field, then straight to the keys
        first = _item(page)
        page.keyboard.press("f")  # the first key after sign-in counts
        second = _next_item(page, first)

        # layout: query, positive and candidate side by side above the fold, verdict buttons visible
        boxes = {k: page.locator(f"[data-box={k}]").bounding_box() for k in ("query", "positive", "candidate")}
        for kind, box in boxes.items():
            assert box is not None and box["y"] >= 0 and box["y"] + 60 < 768, kind  # its head and text on screen
        pos, cand = boxes["positive"], boxes["candidate"]
        assert abs(pos["y"] - cand["y"]) < 2 and pos["x"] + pos["width"] <= cand["x"]  # side by side
        assert boxes["query"]["y"] + boxes["query"]["height"] <= pos["y"]
        for label in ("Relevant — a false negative", "Not relevant", "Unsure", "Skip", "Undo"):
            b = page.get_by_role("button", name=label).bounding_box()
            assert b is not None and b["y"] + b["height"] <= 768, label

        # data text with HTML and Markdown is shown as text and never runs
        assert page.evaluate("window.__pwned") is None
        assert page.locator("[data-box=candidate] strong").count() == 0
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "review.png"))

        # two keys 60 ms apart, then two at once: the first key of each burst judges the item on screen; the second
        # judges the next item if it was drawn by then, or nothing (a key pressed before the next item was drawn
        # presses the last item's button, which no longer acts) -- never an item that was not on screen
        page.evaluate("window.__keys = []")
        page.keyboard.press("t")
        page.wait_for_timeout(60)
        page.keyboard.press("u")
        page.wait_for_timeout(1500)  # anything the second key could still do has happened by now
        page.keyboard.press("t")
        page.keyboard.press("u")  # a few milliseconds later
        page.wait_for_timeout(1500)
        burst_log = _browser_log(page)
        third = _item(page)

        # keys do not type into a field after Esc; the note goes with the next verdict
        page.get_by_placeholder("Note (optional)").click()
        page.keyboard.type("fu")  # inside the field: text, not verdicts
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        assert _item(page) == third
        page.keyboard.press("t")
        fourth = _next_item(page, third)
        page.keyboard.press("z")  # undo brings the item back
        assert _ids(_next_item(page, fourth)) == _ids(third)
    server["stop"]()
    events = _verdicts(db)
    assert events[0][:3] == (*_ids(first), "false_negative") and events[1][:2] == _ids(second)
    _check_bursts(burst_log, events[1:-2], ["tu", "tu"])
    assert events[-2][:3] == (*_ids(third), "true_negative")  # the note went with it
    assert {a for *_, a, _ in events} == {"ann"}
    assert events[-2][4] == "fu" and events[-1][2] == "undo"


def test_reload_keeps_the_annotator_signed_in_with_the_skips(server, browser):
    url, db = server["url"], server["db"]
    with _page(browser) as page:
        _sign_in(page, url, "bob")
        first = _item(page)
        page.keyboard.press("s")  # skip
        second = _next_item(page, first)
        # Streamlit loads a button's code lazily: hold it back, so the item is on screen before its buttons are
        # drawn; a key pressed then acts once they are (a key that did nothing after a page load, in CI).
        held_code: list = []
        page.route("**/static/js/Button.*.js", lambda route: held_code.append(route))
        page.reload()
        assert page.get_by_label("Password", exact=True).count() == 0
        held = _item(page)
        assert _ids(held) == _ids(second)  # the same held item, the skipped one still out
        assert held_code and page.locator(VERDICT_BUTTONS).count() == 0
        page.keyboard.press("t")
        page.wait_for_timeout(500)
        assert _item(page) == held
        for route in held_code:
            route.continue_()
        page.unroute("**/static/js/Button.*.js")
        third = _next_item(page, held)
        for _ in range(4):  # a key held down (the keyboard repeats it) judges once
            page.keyboard.down("u")
        page.keyboard.up("u")
        fourth = _next_item(page, third)
        page.wait_for_timeout(1000)
        assert _item(page) == fourth
        page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
        page.get_by_label("Password", exact=True).wait_for()
        page.reload()
        page.get_by_label("Password", exact=True).wait_for()  # signed out stays signed out
    server["stop"]()
    assert [(q, d, v, a) for q, d, v, a, _ in _verdicts(db)] == [(*_ids(second), "true_negative", "bob"),
                                                                  (*_ids(third), "unsure", "bob")]


def test_two_annotators_in_two_browsers_never_get_the_same_item(server, browser):
    url, db = server["url"], server["db"]
    shown: dict[str, list[tuple[str, str]]] = {"ann": [], "bob": []}
    with _page(browser) as a, _page(browser) as b:
        pages = {"ann": a, "bob": b}
        for name, page in pages.items():
            _sign_in(page, url, name)
        current = {name: _item(page) for name, page in pages.items()}
        for _ in range(6):
            for name, page in pages.items():
                shown[name].append(_ids(current[name]))
                page.keyboard.press("t")
            for name, page in pages.items():
                current[name] = _next_item(page, current[name])
    assert not set(shown["ann"]) & set(shown["bob"])
    server["stop"]()
    judged = [(q, d) for q, d, *_ in _verdicts(db)]
    assert len(judged) == 12 and len(set(judged)) == 12


def test_lead_and_admin_pages_and_screenshots(server, browser):
    url = server["url"]
    with _page(browser, 1440, 1100) as page:
        _sign_in(page, url, "lee")
        _item(page)
        page.goto(f"{url}/histograms")
        page.get_by_text("What the bands mean", exact=False).wait_for()
        page.wait_for_selector(".js-plotly-plot")
        page.get_by_role("tab", name="Ratio").click()
        page.get_by_text("Ratio to the positive").first.wait_for()
        page.wait_for_timeout(800)
        assert page.get_by_text("95.0% of the positive").count() > 0  # the default relative margin, drawn
        page.get_by_role("tab", name="Scores").click()
        page.wait_for_timeout(800)
        page.screenshot(path=str(DOCS / "histograms.png"))

        page.goto(f"{url}/team")
        page.get_by_text("Review guidelines").wait_for()
        page.get_by_role("textbox").first.fill("**Relevant** means the passage answers the query.")
        page.get_by_role("button", name="Save guidelines").click()
        page.get_by_text("annotators see these guidelines now").wait_for()
        page.screenshot(path=str(DOCS / "team.png"))

        page.goto(f"{url}/export")
        page.get_by_role("button", name="Prepare export").click()
        page.get_by_role("button", name="Download JSONL").or_(page.get_by_text("Download", exact=False)).first.wait_for()
        page.get_by_role("button", name="Prepare the HTML report").click()
        page.get_by_role("button", name="Download the HTML report").wait_for()
        page.set_viewport_size({"width": 1440, "height": 1500})
        page.mouse.move(5, 1400)
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "export.png"))

    with _page(browser, 1440, 1100) as page:
        _sign_in(page, url, "ada")
        _item(page)
        page.goto(f"{url}/load")
        page.get_by_text("1 · Ingest").wait_for()
        page.locator("input[type=file]").set_input_files(str(MSMARCO))
        page.get_by_text("train.jsonl", exact=False).first.wait_for()
        page.get_by_role("button", name="Ingest upload").click()
        page.get_by_text("new candidates:       250", exact=False).wait_for()
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "load.png"))
    for name in ("review", "histograms", "load", "export", "signin", "team"):
        assert (DOCS / f"{name}.png").stat().st_size > 15_000


def test_report_opens_offline_in_the_browser(tmp_path, mined_cranfield_path, browser):
    """`auditor stats --report` writes one self-contained file: it renders its Plotly figures with no network."""
    from auditor import review
    from auditor.store import open_store

    db = copy_store(mined_cranfield_path, tmp_path / "report.duckdb")
    con = open_store(db)
    queue = review.build_queue(con, annotator="lead", limit=4)
    for i, (q, d) in enumerate(zip(queue["query_id"], queue["doc_id"])):
        review.record_verdict(con, query_id=q, doc_id=d, annotator="lead",
                              verdict="false_negative" if i % 2 else "true_negative", queue_mode="risk")
    con.execute("INSERT INTO candidates (query_id, doc_id, source) SELECT query_id, doc_id, "
                "'<a href=\"http://example.com\">evil</a>' FROM candidates LIMIT 1")
    con.close()
    report = tmp_path / "report.html"
    out = subprocess.run([sys.executable, "-m", "auditor", "stats", "--db", str(db), "--report", str(report)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    context = browser.new_context(offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(report.as_uri())
    page.wait_for_selector(".js-plotly-plot")
    assert page.locator(".js-plotly-plot").count() >= 3
    assert page.get_by_text("false negative", exact=False).count() > 0
    # a source name is text, not a link (Plotly turns <a href> in a label into one)
    assert page.locator('.js-plotly-plot a[href="http://example.com"]').count() == 0
    assert page.locator(".js-plotly-plot text", has_text='<a href="http://example.com">evil</a>').count() > 0
    context.close()
    assert errors == []
    assert all(u.startswith("file:") or u.startswith("data:") for u in requests), requests


def _no_exception(page) -> None:
    """Nothing on the page is a Python exception (Streamlit draws one as an stException box with the traceback)."""
    page.wait_for_timeout(300)
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


def _filter_query(page, query_id: str) -> str:
    box = page.get_by_label("Query id", exact=True)
    box.fill(query_id)
    box.press("Enter")
    page.wait_for_function(
        "q => { const e = document.querySelector('[data-review-item]'); "
        "return e && e.getAttribute('data-review-item').startsWith(q + '/'); }", arg=query_id)
    return _item(page)


def test_query_filter_to_a_query_with_fewer_positives(server, browser):
    """Showing positive 5 of query 157's 39 (in the store), then filtering to query 119 (2 positives) once crashed the Review page
    with an IndexError: the new queue's item inherited the old item's choice of positive."""
    with _page(browser) as page:
        _sign_in(page, server["url"], "ann")
        _item(page)
        _filter_query(page, "157")
        page.locator('[class*="st-key-pos_"] [role=radiogroup] label').nth(4).click()  # the 5th positive
        page.wait_for_selector("text=/Labeled positive 5 of [0-9]+/")
        _no_exception(page)
        _filter_query(page, "119")
        page.wait_for_selector("text=Labeled positive")
        _no_exception(page)
        assert page.get_by_text("Labeled positive 5 of").count() == 0
        page.keyboard.press("t")  # and the item can be judged
        page.wait_for_function("() => document.body.innerText.includes('Not relevant: saved for 119')")
        _no_exception(page)


def test_stratified_order_on_a_store_with_given_negatives(tmp_path, browser):
    """The MS MARCO sample's negatives come with the training file (no mined rank): the stratified order once
    crashed on them (int(NA)). Here an annotator walks it and judges."""
    from auditor import accounts
    from auditor.sample import build_sample_store
    from auditor.store import open_store

    db = build_sample_store(tmp_path / "msmarco.duckdb", source=MSMARCO)
    con = open_store(db)
    accounts.add_user(con, "ann", "annotator", password=PASSWORD)
    con.close()
    with _serve(tmp_path, db) as served, _page(browser) as page:
        _sign_in(page, served["url"], "ann")
        before = _item(page)
        page.get_by_text("Stratified random (per band)").click()
        page.wait_for_function(
            "b => { const e = document.querySelector('[data-review-item]'); "
            "return e && e.getAttribute('data-review-item') !== b; }", arg=before)
        _no_exception(page)
        for _ in range(3):
            current = _item(page)
            page.keyboard.press("t")
            _next_item(page, current)
            _no_exception(page)
        served["stop"]()
        con = duckdb.connect(str(db), read_only=True)
        try:
            modes = con.execute("SELECT queue_mode, count(*), count(sampling_prob) FROM verdicts GROUP BY 1").fetchall()
            unranked = con.execute("SELECT count(*) FROM scores WHERE rank IS NULL").fetchone()[0]
        finally:
            con.close()
    assert modes == [("stratified", 3, 3)]
    assert unranked > 0  # the store does hold given negatives without a rank


def test_concurrent_wrong_passwords_lock_the_name_out(server, browser):
    """24 wrong passwords from 12 browser sessions at once (two rounds of 12 clicks) lock the name out; the right
    password is then refused too. The counter once raced the password check, and nothing was locked."""
    url = server["url"]
    with contextlib.ExitStack() as stack:
        pages = [stack.enter_context(_page(browser)) for _ in range(12)]
        for page in pages:
            page.goto(url)
            page.get_by_label("Name", exact=True).fill("ann")
        for _ in range(2):
            for page in pages:
                page.get_by_label("Password", exact=True).fill("not-the-password")
            # the 12 clicks fire at one moment on the shared clock (Playwright's own clicks would come one by one)
            at = pages[0].evaluate("() => Date.now()") + 1500
            for page in pages:
                page.get_by_role("button", name="Sign in").evaluate(
                    "(b, at) => setTimeout(() => b.click(), at - Date.now())", at)
            for page in pages:
                page.wait_for_selector("text=/Wrong name or password|too many failed sign-ins/")
            pages[0].wait_for_timeout(1500)  # the second round's answers replace the first round's on screen
        with _page(browser) as page:
            _sign_in(page, url, "ann")
            page.wait_for_selector("text=too many failed sign-ins")
            assert page.locator(ITEM).count() == 0
        with _page(browser) as page:  # another name is not affected
            _sign_in(page, url, "bob")
            _item(page)


def test_a_local_app_refuses_a_rebinding_host_name(tmp_path, mined_cranfield_path, browser):
    """Without accounts the app is for this computer only. A web site whose name resolves to 127.0.0.1 (DNS
    rebinding; here Chromium's resolver rule plays the DNS server) must not get the app; localhost still does."""
    db = copy_store(mined_cranfield_path, tmp_path / "local.duckdb")
    with _serve(tmp_path, db) as served:
        port = served["url"].rsplit(":", 1)[1]
        # a second Chromium from the module's Playwright (a second sync_playwright() in one process is refused)
        b = browser.browser_type.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=[*CHROMIUM_FLAGS, "--host-resolver-rules=MAP rebind.example 127.0.0.1"])
        try:
            page = b.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"http://rebind.example:{port}/")
            page.wait_for_selector("text=Open this app as localhost")
            page.wait_for_timeout(1000)
            body = page.inner_text("body")
            assert "rebind.example" in body and "Labeled positive" not in body and "Local single-user" not in body
            page.goto(f"http://localhost:{port}/")
            page.wait_for_selector("text=Labeled positive")
            assert "Open this app as localhost" not in page.inner_text("body")
        finally:
            b.close()


def test_keys_do_not_judge_while_the_history_grid_has_focus(server, browser):
    """The last-verdicts grid takes keys itself (moving, editing a cell): a letter typed there must not judge the
    item on screen. Esc leaves the grid, and the keys judge again."""
    url, db = server["url"], server["db"]
    with _page(browser) as page:
        _sign_in(page, url, "bob")
        first = _item(page)
        page.keyboard.press("t")
        second = _next_item(page, first)
        page.get_by_text("Your last 20 verdicts").click()
        grid = page.locator("[data-testid='data-grid-canvas']").first
        grid.wait_for()
        page.wait_for_timeout(1500)  # the panel's rerun settles (a redraw would take the focus away again)
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        page.mouse.click(box["x"] + min(60, box["width"] / 4), box["y"] + min(50, box["height"] - 5))  # row 1
        page.wait_for_timeout(300)
        for key in ("t", "f", "u", "s"):
            page.keyboard.press(key)
        page.wait_for_timeout(1500)
        assert _item(page) == second
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        page.keyboard.press("t")
        _next_item(page, second)
    server["stop"]()
    assert [(q, d, v) for q, d, v, *_ in _verdicts(db)] == [(*_ids(first), "true_negative"),
                                                           (*_ids(second), "true_negative")]


def test_verdict_buttons_are_on_screen_on_a_phone(server, browser):
    """At 390x844 Streamlit stacks the columns: the texts come first and would push the verdict buttons below the
    fold. They stay at the bottom of the screen, and a tap judges the item on screen."""
    url, db = server["url"], server["db"]
    with _page(browser, width=390, height=844) as page:
        _sign_in(page, url, "ann")
        first = _item(page)
        page.wait_for_timeout(500)
        for label in ("Relevant — a false negative", "Not relevant", "Unsure"):
            b = page.get_by_role("button", name=label).bounding_box()
            assert b is not None and b["y"] >= 0 and b["y"] + b["height"] <= 844, (label, b)
        query = page.locator("[data-box=query]").bounding_box()
        assert query is not None and query["y"] + 40 < 844  # the query is still seen first
        page.mouse.click(*(lambda b: (b["x"] + b["width"] / 2, b["y"] + b["height"] / 2))(
            page.get_by_role("button", name="Not relevant").bounding_box()))
        _next_item(page, first)
    server["stop"]()
    assert [(q, d, v) for q, d, v, *_ in _verdicts(db)] == [(*_ids(first), "true_negative")]
