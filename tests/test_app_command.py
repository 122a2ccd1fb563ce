"""`auditor app`: loopback unless the store has accounts, --help says so, and stopping it stops Streamlit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_auditor_app_stops_streamlit(handbuilt_store_path, tmp_path, sig):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "auditor", "app", "--db", str(handbuilt_store_path),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        (child,) = _children(proc.pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        for _ in range(50):
            if not _alive(child):
                break
            time.sleep(0.2)
        assert not _alive(child), "streamlit is still running after auditor app stopped"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()


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
