"""The command line as scripts use it: standard output as a destination, stores that must exist, quiet runs,
machine-readable summaries, help with examples, and what the package asks of a user's environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_store

from auditor import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hand_db(handbuilt_store_path) -> str:
    return str(handbuilt_store_path)


def test_stats_and_verdicts_export_write_dash_to_standard_output(hand_db, tmp_path, monkeypatch, capsys):
    """`--out -` is standard output, as for `export`: never a file named '-'."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["stats", "--db", hand_db, "--out", "-"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["shape"]["queries"] == 3
    assert cli.main(["verdicts", "import", str(_verdict_file(tmp_path)), "--db", hand_db]) == 0
    capsys.readouterr()
    assert cli.main(["verdicts", "export", "--db", hand_db, "--out", "-"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [(e["query_id"], e["doc_id"], e["verdict"]) for e in events] == [("q1", "n1", "false_negative")]
    assert "wrote 1 verdict events" in captured.err  # the summary leaves standard output to the data
    assert not (tmp_path / "-").exists()


def _verdict_file(tmp_path: Path) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"query_id": "q1", "doc_id": "n1", "verdict": "false_negative",
                                "annotator": "judge"}) + "\n")
    return path


@pytest.mark.parametrize("argv", [
    ["export", "--out", "{tmp}/out.jsonl"],
    ["verdicts", "import", "{tmp}/answers.jsonl"],
    ["queue", "--claim", "--annotator", "a", "--limit", "1"],
    ["queue", "--release", "--annotator", "a"],
    ["users", "remove", "nobody"],
])
def test_a_mistyped_store_is_refused_not_created(tmp_path, capsys, argv):
    """Only `ingest` (and `users add`) create a store: elsewhere a mistyped --db would write into an empty one."""
    _verdict_file(tmp_path)
    missing = tmp_path / "tpyo.duckdb"
    args = [a.format(tmp=tmp_path) for a in argv] + ["--db", str(missing)]
    assert cli.main(args) == cli.EXIT_USAGE
    assert f"no store at {missing}" in capsys.readouterr().err
    assert not missing.exists() and not Path(f"{missing}.wal").exists()


def test_users_add_replace_is_all_or_nothing(tmp_path, monkeypatch):
    """A failure after the password changed (signing the account out) leaves the old account and its sessions."""
    from auditor import accounts
    from auditor.store import open_store

    con = open_store(tmp_path / "u.duckdb")
    try:
        accounts.add_user(con, "ann", "annotator", password="first password")
        token = accounts.new_session(con, "ann")

        def broken(*_a, **_k):
            raise RuntimeError("disk went away")

        monkeypatch.setattr(accounts, "end_sessions", broken)
        with pytest.raises(RuntimeError):
            accounts.add_user(con, "ann", "lead", password="second password", replace=True)
        assert accounts.get_user(con, "ann").role == "annotator"
        assert accounts.verify_password("first password", con.execute(
            "SELECT password_hash FROM users WHERE name = 'ann'").fetchall()[0][0])
        assert accounts.session_user(con, token) is not None
    finally:
        con.close()


def test_mine_json_and_quiet(tmp_path, capsys):
    """`mine --json` prints one JSON summary on standard output; `-q` silences progress bars and library logs
    (bm25s logs a DEBUG line at default verbosity otherwise)."""
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"query": "what is wing flutter", "pos": ["flutter is an aeroelastic vibration of wings"],
         "neg": ["boundary layer transition on flat plates"]},
        {"query": "heat transfer in hypersonic flow", "pos": ["hypersonic heat transfer measured on cones"],
         "neg": ["flutter of panels in supersonic flow"]},
    ]))
    db = str(tmp_path / "t.duckdb")
    assert cli.main(["-q", "ingest", str(data), "--db", db]) == 0
    capsys.readouterr()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "auditor", "mine", "--db", db, "--depth", "2", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["queries"] == 2 and summary["depth"] == 2 and sum(summary["bands"].values()) >= 2
    assert "DEBUG" not in done.stderr  # bm25s' own logger, set to DEBUG by the package
    quiet = subprocess.run([sys.executable, "-m", "auditor", "-q", "mine", "--db", db, "--depth", "2"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "bands (default)" in quiet.stdout  # results are still printed: -q drops only the chatter


def _subcommands(parser) -> dict:
    import argparse

    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return out


def test_every_command_help_has_examples_that_parse():
    """Each command's --help ends with examples; each example is a command line this parser accepts."""
    parser = cli.build_parser()
    commands = _subcommands(parser)
    leaves = {name: sub for name, sub in commands.items()
              if not any(other.startswith(name + " ") for other in commands)}
    assert {"ingest", "mine", "export", "stats", "queue", "verdicts import", "users add", "app"} <= set(leaves)
    for name, sub in leaves.items():
        text = sub.format_help()
        assert "examples:" in text, f"`auditor {name} --help` has no examples"
        examples = [line.strip() for line in text.split("examples:", 1)[1].splitlines()
                    if line.strip().startswith("auditor ")]
        assert examples, name
        for example in examples:
            command = example.split("   #")[0].split(" | ")[0].split(" < ")[0]
            argv = re.findall(r"'[^']*'|\S+", command)[1:]
            argv = [a.strip("'") for a in argv]
            parser.parse_args(argv)  # SystemExit (a failing test) if an example does not parse


def test_the_package_pins_ranges_not_exact_versions():
    """pyproject.toml is what users' training environments resolve against: exact pins belong in the lock only."""
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    pins = [d for d in re.findall(r'"([^"]+)"', deps) if "==" in d]
    assert pins == []
    assert re.search(r'"torch>=[0-9.]+,<[0-9.]+"', deps)


def test_export_to_stdout_sweeps_folders_of_killed_exports(hand_db, tmp_path, monkeypatch, capsys):
    """`export --out -` writes through a private temporary folder; one left by a killed export (its process gone) is
    removed by the next export to standard output, one of a live process is not."""
    import tempfile

    from auditor.export import TEMP_FOLDER_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{TEMP_FOLDER_PREFIX}stdout-{dead_pid}-abc"
    stale.mkdir()
    (stale / "export.jsonl").write_text("half")
    live = tmp_path / f"{TEMP_FOLDER_PREFIX}stdout-{os.getppid()}-def"
    live.mkdir()
    db = str(copy_store(Path(hand_db), tmp_path / "h.duckdb"))
    assert cli.main(["export", "--db", db, "--out", "-", "--negatives", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 0
    assert not stale.exists() and live.exists()
    assert [p.name for p in tmp_path.glob(f"{TEMP_FOLDER_PREFIX}*")] == [live.name]


def test_verdicts_import_and_its_refit_land_together(hand_db, tmp_path, monkeypatch):
    """A killed or failing refit leaves no imported verdicts behind a risk fitted on older ones."""
    import duckdb

    from auditor import risk

    answers = _verdict_file(tmp_path)
    real_fit = risk.fit

    def dies(*_a, **_k):
        raise KeyboardInterrupt  # what Ctrl-C or SIGTERM (turned into it) does in the middle of the refit

    monkeypatch.setattr(risk, "fit", dies)
    assert cli.main(["verdicts", "import", str(answers), "--db", hand_db]) == cli.EXIT_INTERRUPTED
    with duckdb.connect(hand_db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM verdicts").fetchall()[0][0] == 0
    monkeypatch.setattr(risk, "fit", real_fit)
    assert cli.main(["verdicts", "import", str(answers), "--db", hand_db]) == 0
    with duckdb.connect(hand_db, read_only=True) as con:
        events = con.execute("SELECT max(event_id) FROM verdicts").fetchall()[0][0]
        fitted = con.execute("SELECT max(last_event_id) FROM risk_fits").fetchall()[0][0]
        assert events is not None and fitted == events


def test_the_python_api_example_in_readme_runs(tmp_path, monkeypatch):
    """README's "Python API" block, run as written against the shipped MS MARCO sample."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(block, "README.md (Python API)", "exec"), {})
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(len(r["neg"]) == 5 and r["pos"] for r in lines)
