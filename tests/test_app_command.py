"""`auditor app`: loopback unless the store has accounts, --help says so, and stopping it stops Streamlit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from auditor.commands.app import listen_address


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_help_explains_who_may_use_the_app():
    out = _cli("app", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "127.0.0.1" in text and "auditor users add" in text
    for role in ("annotator", "lead", "admin"):
        assert role in text


def test_a_network_address_is_refused_without_accounts(handbuilt_store_path):
    db = str(handbuilt_store_path)
    for args in (["--host", "0.0.0.0"], ["--", "--server.address", "0.0.0.0"], ["--host", "192.168.1.5"]):
        out = _cli("app", "--db", db, *args)
        assert out.returncode == 2, args
        assert "refusing to listen" in out.stderr and "auditor users add" in out.stderr
    env = dict(os.environ, STREAMLIT_SERVER_ADDRESS="0.0.0.0")
    assert _cli("app", "--db", db, env=env).returncode == 2


def test_listen_address_follows_streamlits_precedence(monkeypatch):
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    assert listen_address("127.0.0.1", []) == "127.0.0.1"
    assert listen_address("127.0.0.1", ["--server.address", "0.0.0.0"]) == "0.0.0.0"
    assert listen_address("127.0.0.1", ["--server.address=::"]) == "::"
    monkeypatch.setenv("STREAMLIT_SERVER_ADDRESS", "10.0.0.1")
    assert listen_address("127.0.0.1", []) == "10.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@contextmanager
def _running_app(db: Path):
    """`auditor app --db db` on a free port, once it answers its health check; yields (process, port). Killed after
    the block if it is still running."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "auditor", "app", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the app did not start"
            time.sleep(0.3)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _gone(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_auditor_app_stops_streamlit(handbuilt_store_path, tmp_path, sig):
    with _running_app(handbuilt_store_path) as (proc, port):
        (child,) = _children(proc.pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert _gone(child), "streamlit is still running after auditor app stopped"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's prctl")
def test_kill_9_of_auditor_app_stops_streamlit_and_frees_the_store(handbuilt_store_path):
    """`kill -9` gives `auditor app` no chance to stop its child: Streamlit must notice by itself, or it keeps the
    store locked and every later command fails."""
    from auditor.store import open_store

    with _running_app(handbuilt_store_path) as (proc, _port):
        (child,) = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        try:
            assert _gone(child), "streamlit is still running after auditor app was killed"
        finally:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
    open_store(handbuilt_store_path).close()  # the store is free again


def test_uploads_are_capped_where_config_readme_and_page_agree():
    """A signed-out visitor can reach Streamlit's upload endpoint: the cap is what bounds it, and README tells a
    team to cap request bodies at the proxy with the same number."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    mb = tomllib.loads((root / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert mb <= 200
    readme = (root / "README.md").read_text()
    assert f"`server.maxUploadSize` ({mb} MB" in readme
    assert re.search(rf"client_max_body_size {mb}m;", readme)


def _handshake(port: int, host: str) -> str:
    """The status line Streamlit answers to a WebSocket upgrade of its session stream, asked for under `host`."""
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def test_a_local_app_refuses_the_session_stream_under_a_foreign_host_name(handbuilt_store_path):
    """DNS rebinding: a web site's name made to resolve to 127.0.0.1 reaches the port, but its requests carry that
    name in Host. The session stream (every page, every verdict, every upload goes through it) opens only under
    a loopback name, whatever page script runs."""
    with _running_app(handbuilt_store_path) as (_proc, port):
        for name in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert " 101 " in _handshake(port, name) + " ", name
        for name in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1.nip.io:{port}", f"localhost.evil:{port}"):
            status = _handshake(port, name)
            assert " 101" not in status and status.split()[1] in ("400", "403", "421"), (name, status)
