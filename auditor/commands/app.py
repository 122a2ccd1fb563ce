"""`auditor app`: start the web app (Streamlit) on a store."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="open the review app in the browser",
        description=(
            "Start the web app (review queue, histograms and bands, load, export) on a store. Without --db it opens "
            "the sample store, building it from the shipped Cranfield sample on first start (ingest, mine with the "
            "default model, bands: about a minute on two CPU cores). Streamlit options go after `--`, e.g. "
            "`auditor app --db x.duckdb -- --server.port 8502 --server.address 0.0.0.0`; STREAMLIT_* environment "
            "variables work as well. Only this process may write the store while the app runs."
        ),
    )
    p.add_argument("--db", help="store file (default: the sample store, built on first start)")
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


def streamlit_command(script: Path, extra: list[str]) -> list[str]:
    """The `streamlit run` command line, with the user's Streamlit options passed through unchanged."""
    if extra and extra[0] == "--":
        extra = extra[1:]
    return [sys.executable, "-m", "streamlit", "run", str(script), *extra]


def run_app(args: argparse.Namespace) -> int:
    from auditor import config
    from auditor.cli import UserError

    script = app_script()
    if args.double_annotation is not None and not 0 <= args.double_annotation <= 1:
        raise UserError("--double-annotation is a share between 0 and 1")
    if args.db:
        db = Path(args.db).expanduser().resolve()
        if not db.exists():
            raise UserError(f"no store at {db}: create it with `auditor ingest PATH --db {args.db}` (or omit --db to "
                            "open the sample store)")
    else:
        db = Path(config.DEFAULT_APP_DB).expanduser().resolve()
        if not db.exists():
            _build_sample(db)
    env = dict(os.environ, AUDITOR_DB=str(db))
    if args.double_annotation is not None:
        env["AUDITOR_DOUBLE_ANNOTATION"] = str(args.double_annotation)
    cmd = streamlit_command(script, list(args.streamlit_args or []))
    print(f"auditor app on {db}", file=sys.stderr)
    try:
        return subprocess.call(cmd, env=env, cwd=str(script.parent))
    except KeyboardInterrupt:
        return 0


def _build_sample(db: Path) -> None:
    from auditor.commands.progress import progress_bar
    from auditor.sample import build_sample_store

    print(f"first start: building the sample store {db} (Cranfield, default model)", file=sys.stderr)
    with progress_bar("sample store", unit="", bar_format="{l_bar}{bar}| {elapsed}") as progress:
        build_sample_store(db, progress=progress)
