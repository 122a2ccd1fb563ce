"""`auditor app`: start the web app (Streamlit) on a store."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="open the review app in the browser",
        description=(
            "Start the web app (review queue, histograms and bands, load, export) on a store. Without --db it opens "
            "the sample store, building it from the shipped Cranfield sample on first start (ingest, mine with the "
            "default model, bands: about a minute on two CPU cores).\n\n"
            "Who may use it: without accounts the app is a local single-user tool. It listens on 127.0.0.1 only "
            "(this computer), the person who started it can do everything, and --host with any other address is "
            "refused. Once the store has an account (`auditor users add NAME --role annotator|lead|admin "
            "--password-stdin --db FILE`), every page asks to sign in and shows what the role allows: an annotator "
            "reviews; a lead also tunes and saves bands, exports and sets the review guidelines; an admin also "
            "loads data (server paths only inside --data-root) and manages accounts. Then --host 0.0.0.0 (or an "
            "interface's address) serves a team; put it behind HTTPS (a reverse proxy) when the network is not "
            "trusted.\n\n"
            "Streamlit options go after `--`, e.g. `auditor app --db x.duckdb -- --server.port 8502`. Only this "
            "process may write the store while the app runs; stopping it (Ctrl-C, SIGTERM) stops Streamlit too."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", help="store file (default: the sample store, built on first start)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this computer only; any other needs accounts)")
    p.add_argument("--port", type=int, help="port to listen on (default 8501)")
    p.add_argument("--data-root", metavar="DIR",
                   help="the only folder whose files admins may load by server path (default: the shipped data/)")
    p.add_argument("--double-annotation", type=float, metavar="SHARE",
                   help="share of review items routed to a second annotator for agreement (default 0)")
    p.add_argument(
        "streamlit_args", nargs=argparse.REMAINDER, metavar="-- STREAMLIT_OPTIONS",
        help="options passed to `streamlit run` unchanged",
    )
    p.set_defaults(func=run_app)


def app_script() -> Path:
    """The entry script (app.py at the repository root)."""
    from auditor.cli import UserError
    from auditor.config import PROJECT_ROOT

    script = PROJECT_ROOT / "app.py"
    if not script.exists():
        raise UserError(
            f"cannot find the app's entry script at {script}; run auditor from a checkout of the repository"
        )
    return script


def streamlit_command(script: Path, extra: list[str], host: str | None = None, port: int | None = None,
                      allowed_hosts: tuple[str, ...] | None = None) -> list[str]:
    """The `streamlit run` command line, with the user's Streamlit options passed through unchanged.
    `allowed_hosts`: the only Host names (ports ignored) Streamlit opens its session stream to."""
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = [sys.executable, "-m", "streamlit", "run", str(script)]
    for name in allowed_hosts or ():
        cmd += ["--server.allowedHosts", name]
    if host is not None:
        cmd += ["--server.address", host]
    if port is not None:
        cmd += ["--server.port", str(port)]
    return [*cmd, *extra]


def _is_loopback(address: str) -> bool:
    address = address.strip().strip("[]")
    return address in LOOPBACK or address.startswith("127.")


def listen_address(host: str, extra: list[str]) -> str:
    """The address Streamlit will listen on: a --server.address among the pass-through options wins over --host,
    and STREAMLIT_SERVER_ADDRESS over both (Streamlit's own precedence)."""
    address = host
    for i, arg in enumerate(extra):
        if arg == "--server.address" and i + 1 < len(extra):
            address = extra[i + 1]
        elif arg.startswith("--server.address="):
            address = arg.split("=", 1)[1]
    return os.environ.get("STREAMLIT_SERVER_ADDRESS") or address


def _has_accounts(db: Path) -> bool:
    from auditor.accounts import has_accounts
    from auditor.store import open_store

    con = open_store(db, read_only=True)
    try:
        return has_accounts(con)
    finally:
        con.close()


def run_app(args: argparse.Namespace) -> int:
    from auditor import config
    from auditor.cli import UserError

    script = app_script()
    if args.double_annotation is not None and not 0 <= args.double_annotation <= 1:
        raise UserError("--double-annotation is a share between 0 and 1")
    extra = list(args.streamlit_args or [])
    address = listen_address(args.host, extra)
    if args.db:
        db = Path(args.db).expanduser().resolve()
        if not db.exists():
            raise UserError(f"no store at {db}: create it with `auditor ingest PATH --db {args.db}` (or omit --db to "
                            "open the sample store)")
    else:
        db = Path(config.DEFAULT_APP_DB).expanduser().resolve()
    team = db.exists() and _has_accounts(db)
    if not _is_loopback(address) and not team:
        raise UserError(
            f"refusing to listen on {address}: this store has no accounts, so anyone who reaches the port could "
            "load, relabel and download the data. Add accounts first (`auditor users add NAME --role admin "
            "--password-stdin --db FILE`), or leave --host at 127.0.0.1 (this computer only)."
        )
    if not db.exists():
        _build_sample(db)
    env = dict(os.environ, AUDITOR_DB=str(db))
    if args.double_annotation is not None:
        env["AUDITOR_DOUBLE_ANNOTATION"] = str(args.double_annotation)
    if args.data_root:
        root = Path(args.data_root).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"--data-root {root} is not a folder")
        env["AUDITOR_DATA_ROOT"] = str(root)
    # DNS rebinding: without accounts, Streamlit opens the session stream (every page, verdict and upload goes
    # through it) only to a request whose Host is a loopback name; the page bootstrap checks Host as well.
    cmd = streamlit_command(script, extra, host=args.host, port=args.port,
                            allowed_hosts=None if team else LOOPBACK)
    who = ("accounts: every page asks to sign in" if team
           else "no accounts: a local single-user app, this computer only")
    print(f"auditor app on {db}, listening on {address} ({who})", file=sys.stderr)
    return _run_forwarding_signals(cmd, env, cwd=script.parent)


def _stop_with_parent(parent: int):
    """For the child, before it runs Streamlit: ask Linux to send it SIGTERM when this process dies, even by
    ``kill -9`` (which no handler sees), so Streamlit never outlives `auditor app` holding the store."""

    def arm() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm


def _run_forwarding_signals(cmd: list[str], env: dict[str, str], cwd: Path) -> int:
    """Run Streamlit as a child in its own session; SIGTERM and SIGINT sent to this process go on to it, and this
    process waits until it has stopped (a killed `auditor app` must not leave Streamlit serving the store)."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), start_new_session=True,
                            preexec_fn=_stop_with_parent(os.getpid()) if sys.platform.startswith("linux") else None)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - the handler above normally takes SIGINT
                forward(signal.SIGINT, None)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # pragma: no cover - only when waiting itself failed
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def _build_sample(db: Path) -> None:
    from auditor.commands.progress import progress_bar
    from auditor.sample import build_sample_store

    print(f"first start: building the sample store {db} (Cranfield, default model)", file=sys.stderr)
    with progress_bar("sample store", unit="", bar_format="{l_bar}{bar}| {elapsed}") as progress:
        build_sample_store(db, progress=progress)
