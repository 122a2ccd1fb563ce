"""The Export page's files: one temporary folder per session's export, removed on the next export, at exit, and
(left by a killed app) after a day; the layouts and file types the page offers."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from auditor import export as export_mod
from auditor import files

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _export_page(monkeypatch, db: Path) -> AppTest:
    monkeypatch.setenv("AUDITOR_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["annotator"] = "ada"
    at.run()
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    return at


def _prepare(at: AppTest) -> Path:
    at.button(key="x_go").click().run()
    assert not at.exception, at.exception
    return Path(at.session_state["x_result"]["path"])


def test_each_export_gets_a_fresh_temp_folder_and_the_last_one_is_removed(monkeypatch, handbuilt_store_path):
    at = _export_page(monkeypatch, handbuilt_store_path)
    first = _prepare(at)
    assert first.exists() and first.parent.parent == Path(tempfile.gettempdir())
    assert first.parent.name.startswith(export_mod.TEMP_FOLDER_PREFIX)
    second = _prepare(at)
    assert second.exists() and second.parent != first.parent
    assert not first.parent.exists()  # the session's previous export is gone
    files._remove_all_app_folders()  # what runs at exit
    assert not second.parent.exists()


def test_page_offers_st_ntuple_and_parquet(monkeypatch, handbuilt_store_path):
    at = _export_page(monkeypatch, handbuilt_store_path)
    assert at.radio(key="x_fmt").options == ["triplet", "st-ntuple", "ntuple", "rich"]
    at.radio(key="x_fmt").set_value("st-ntuple").run()
    at.radio(key="x_file_type").set_value("parquet").run()
    at.number_input(key="x_neg").set_value(2).run()
    path = _prepare(at)
    assert path.suffix == ".parquet" and path.read_bytes()[:4] == b"PAR1"
    preview = at.session_state["x_result"]["preview"]
    assert preview and list(preview[0])[:3] == ["anchor", "positive", "negative_1"]
    assert any(b.label == "Download Parquet" for b in at.get("download_button"))
    assert "--out train.st-ntuple.parquet --format st-ntuple --negatives 2" in at.code[0].value
    files._remove_all_app_folders()


def test_folders_left_by_a_killed_app_are_removed_after_a_day(tmp_path):
    old, recent = tmp_path / f"{export_mod.TEMP_FOLDER_PREFIX}old", tmp_path / f"{export_mod.TEMP_FOLDER_PREFIX}new"
    other = tmp_path / "someone-else"
    for folder in (old, recent, other):
        folder.mkdir()
        (folder / "train.jsonl").write_text("{}\n")
    two_days_ago = time.time() - 2 * 86_400
    for folder in (old, other):
        os.utime(folder, (two_days_ago, two_days_ago))
    assert files.remove_old_temp_folders(base=tmp_path) == [old]
    assert not old.exists() and recent.exists() and other.exists()
