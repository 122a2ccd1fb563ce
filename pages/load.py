"""Load data page (admins): ingest a training set (upload or server path), then mine candidates with a model.

The page only collects options; auditor.ingest.ingest_path and auditor.mine.mine do the work (the same code as
`auditor ingest` and `auditor mine`), reporting progress through a callback that drives st.progress.

Server paths are read only inside the data root (AUDITOR_DATA_ROOT, `auditor app --data-root`), only regular files
under a size cap; uploads are capped by server.maxUploadSize and zip files by their unpacked size. Error messages
name the file as the admin knows it (the upload's name, never a server temp path) and quote none of its content.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import streamlit as st

from auditor import config
from auditor.info import store_info
from auditor.store import StoreError, table_counts
from pages import _common as ui

ui.require_app()
ui.require("load")
ss = st.session_state
con = ui.cursor()

#: A zip upload may unpack to at most this many bytes and files.
ZIP_MAX_BYTES = 4 * 1024**3
ZIP_MAX_FILES = 10_000

ui.page_header("Load data", "Bring in a training set, then mine and score candidate negatives.")

counts = table_counts(con)
cols = st.columns(5)
for col, (label, key) in zip(
    cols, [("Queries", "queries"), ("Documents", "documents"), ("Labels", "qrels"), ("Candidates", "candidates"),
           ("Verdict events", "verdicts")]
):
    col.metric(label, f"{counts[key]:,}", border=True)

from auditor.ingest.formats import FORMATS as _INGEST_FORMATS  # noqa: E402 - one list for the CLI and this page

FORMATS = ["auto", *_INGEST_FORMATS]
FORMAT_HELP = (
    "auto: detected from the folder layout or the first record. beir: folder with corpus.jsonl, queries.jsonl, "
    "qrels/<split>.tsv. flag: FlagEmbedding JSONL {query, pos, neg}. triplets: {anchor|query, positive, negative}. "
    "ntuple: {query, positive, negative_1..n | neg}. labeled-pair / labeled-list: sentence-transformers' "
    "mine_hard_negatives labeled outputs (query, document(s), label(s) 0/1). JSONL (also .gz or a JSON array), "
    "Parquet or CSV."
)


def _show_summary(summary, shown_as: str | None) -> None:
    st.success(f"Ingested {ui.md(shown_as or summary.path)}")
    c = st.columns(5)
    c[0].metric("New queries", f"{summary.queries:,}")
    c[1].metric("New documents", f"{summary.documents:,}")
    c[2].metric("New positives", f"{summary.positives:,}")
    c[3].metric("New candidates", f"{summary.candidates:,}")
    c[4].metric("Duplicates merged", f"{summary.duplicates:,}")
    text = "\n".join(summary.lines())
    if summary.rejects_path:
        text = text.replace(f"(reasons in {summary.rejects_path})", "(reasons in the report below)")
    st.code(text.replace(summary.path, shown_as) if shown_as else text, language=None)
    rejected = ss.pop("load_rejects", None)
    if rejected:
        st.download_button("Download the report of skipped lines", data=rejected[0], file_name=rejected[1],
                           mime="application/jsonl", icon=":material/download:", key="load_rejects_download")


def _ingest(
    path: Path, fmt: str, split: str | None, name: str | None, skip_bad: bool, shown_as: str | None = None,
    temp_root: Path | None = None,
) -> None:
    """Ingest ``path``; errors are shown with ``shown_as`` for the file (an upload's own name) and no content."""
    from auditor.ingest import IngestError, ingest_path
    from auditor.ui_helpers import safe_ingest_message

    bar = st.progress(0.0, text="Reading…")
    report = Path(tempfile.mkdtemp(prefix="auditor-rejects-")) / "rejects.jsonl"  # never the app's working folder
    try:
        summary = ingest_path(ui.cursor(), path, fmt=fmt, split=split or None, name=name or None,
                              skip_bad=skip_bad, rejects_path=report, progress=ui.progress_callback(bar))
    except (IngestError, StoreError, ValueError, OSError) as exc:
        bar.empty()
        where, shown = str(getattr(exc, "where", None) or ""), None
        if temp_root is not None:  # an upload: name it as the admin knows it, never by its temporary path
            inner = where[len(str(temp_root)):].lstrip("/") if where.startswith(str(temp_root)) else ""
            if inner.startswith("unzipped/"):
                shown = f"{shown_as} ({inner.split('/', 1)[1]})"
            else:
                shown = inner or shown_as
        if isinstance(exc, StoreError) and not isinstance(exc, IngestError):  # about the store, not the file
            msg = str(exc).replace(str(temp_root), shown_as or "") if temp_root is not None else str(exc)
        else:
            msg = safe_ingest_message(exc, shown)
        st.error("Nothing was stored. " + ui.md(msg))
        return
    finally:
        rejected = report.read_bytes() if report.exists() else None
        shutil.rmtree(report.parent, ignore_errors=True)
    bar.empty()
    ui.store_changed()
    ss["load_summary"] = (summary, shown_as)
    ss["load_rejects"] = (rejected, f"{summary.dataset.replace('/', '_')}.rejects.jsonl") if rejected else None
    st.rerun()


def _unzip(archive: Path, into: Path) -> None:
    """Unpack a zip upload, refusing one that unpacks too large or holds too many files (zip bombs)."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > ZIP_MAX_FILES or sum(m.file_size for m in members) > ZIP_MAX_BYTES:
            raise ValueError(f"the zip file unpacks to more than {ZIP_MAX_BYTES // 1024**3} GB or "
                             f"{ZIP_MAX_FILES:,} files: ingest it with `auditor ingest` on the server")
        zf.extractall(into)  # zipfile keeps every member inside `into` (no absolute paths, no '..')


def _options(prefix: str) -> tuple[str, str | None, str | None, bool]:
    c1, c2, c3 = st.columns(3)
    fmt = c1.selectbox("Format", FORMATS, key=f"{prefix}_fmt", help=FORMAT_HELP)
    split = c2.text_input("BEIR split", key=f"{prefix}_split", placeholder="train if present, else the only one")
    name = c3.text_input("Dataset name", key=f"{prefix}_name", placeholder="file or folder name")
    skip_bad = st.checkbox("Skip bad lines (store what is valid; report the rest)", key=f"{prefix}_skip",
                           help="default is all or nothing: one bad line and the store is left as it was")
    return fmt, split, name, skip_bad


st.subheader("1 · Ingest")
upload_tab, path_tab = st.tabs(["Upload a file", "Path on the server"])
with upload_tab:
    up = st.file_uploader("Training file (JSONL, Parquet, CSV) or a zipped BEIR folder",
                          type=["jsonl", "json", "parquet", "csv", "zip"], key="load_upload",
                          help=f"up to {st.get_option('server.maxUploadSize'):,} MB")
    fmt, split, name, skip_bad = _options("up")
    if st.button("Ingest upload", type="primary", disabled=up is None, key="load_upload_go", icon=":material/upload:"):
        with tempfile.TemporaryDirectory(prefix="auditor-upload-") as tmp:
            target = Path(tmp) / Path(up.name).name
            target.write_bytes(up.getbuffer())
            if target.suffix == ".zip":
                try:
                    _unzip(target, Path(tmp) / "unzipped")
                except (ValueError, zipfile.BadZipFile) as exc:
                    st.error(ui.md(f"{up.name}: {exc}"))
                    st.stop()
                found = sorted((Path(tmp) / "unzipped").rglob("corpus.jsonl"))
                if not found:
                    st.error(ui.md(f"{up.name} holds no corpus.jsonl: zip a BEIR folder "
                                   "(corpus.jsonl, queries.jsonl, qrels/)."))
                    st.stop()
                target = found[0].parent
            _ingest(target, fmt, split, name or Path(up.name).stem, skip_bad, shown_as=up.name, temp_root=Path(tmp))
with path_tab:
    from auditor.ui_helpers import PathRefused, check_server_path

    root = ui.data_root()
    st.caption(f"Files and BEIR folders inside the data root {ui.md(root)} (start the app with `--data-root DIR` "
               f"for another), up to {ui.max_ingest_bytes() / 1e6:,.0f} MB a file.")
    server_path = st.text_input("File or BEIR folder, relative to the data root (or an absolute path inside it)",
                                key="load_path", placeholder="cranfield")
    fmt, split, name, skip_bad = _options("path")
    if st.button("Ingest path", type="primary", disabled=not server_path.strip(), key="load_path_go",
                 icon=":material/input:"):
        try:
            p = check_server_path(server_path, root, ui.max_ingest_bytes())
        except PathRefused as exc:
            st.error(ui.md(str(exc)))
        else:
            _ingest(p, fmt, split, name, skip_bad)

if ss.get("load_summary") is not None:
    _show_summary(*ss.pop("load_summary"))

st.subheader("2 · Mine and score candidates")
st.caption(
    "Embeds every query and document once (cached in the store), searches the corpus for each query, stores the top "
    "candidates (positives excluded), scores every candidate, given ones included, and assigns the default bands."
)
with st.form("mine"):
    c1, c2 = st.columns([3, 1])
    model = c1.text_input("Model (sentence-transformers name, or a folder inside the data root)",
                          value=config.DEFAULT_MODEL, key="mine_model")
    depth = c2.number_input("Candidates per query", 1, 1000, config.MineConfig.depth, key="mine_depth")
    go = st.form_submit_button("Mine", type="primary", icon=":material/travel_explore:")
if go:
    from auditor.mine import mine
    from auditor.ui_helpers import PathRefused, check_model_field

    bar = st.progress(0.0, text="Loading the model…")
    try:
        try:
            model_arg = check_model_field(model, ui.data_root())  # a folder outside the data root is refused
        except PathRefused as exc:
            raise ValueError(f"Not mined: {exc}.") from None
        summary = mine(ui.cursor(), model_arg, int(depth), progress=ui.progress_callback(bar))
    except (StoreError, ValueError, OSError) as exc:
        bar.empty()
        st.error(ui.md(str(exc)))
    else:
        ui.store_changed()
        ui.warm_queue(summary.model, "default")
        ss["mine_msg"] = (
            f"Mined with {summary.model}: {summary.queries:,} queries searched over {summary.documents:,} documents "
            f"({summary.embedded_documents:,} documents and {summary.embedded_queries:,} queries embedded in this run; "
            "the rest came from the cache). Bands assigned with the default configuration."
        )
        st.rerun()
if ss.get("mine_msg"):
    st.success(ui.md(ss.pop("mine_msg")))
    st.page_link("pages/review.py", label="Start reviewing", icon=":material/rule:")

with st.expander("What is in this store"):
    st.json(store_info(con), expanded=2)
