"""Export page: choose the format and the negatives, preview, download; and the statistics summary.

No export logic here: the file comes from auditor.export.export (the code behind `auditor export`), the numbers from
auditor.stats. The page also shows the equivalent command line, for pipelines.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import streamlit as st

from auditor import config, stats
from auditor.store import StoreError
from auditor.ui_helpers import banded_pairs
from pages import _common as ui
from pages._stats import stats_summary

ui.require_app()
ui.require("export")
ss = st.session_state
con = ui.cursor()

ui.page_header("Export", "Cleaned training data in the layout your trainer reads, and the statistics of the audit.")
pairs = banded_pairs(con)
if not pairs:
    ui.stop_until_loaded("Nothing to export yet: load a training set and mine candidates on the **Load data** page.")

FORMAT_HELP = {
    "triplet": 'sentence-transformers {"anchor", "positive", "negative"}: one line per (positive, negative) pair',
    "st-ntuple": 'sentence-transformers {"anchor", "positive", "negative_1".."negative_N"}: one line per query '
                 "with exactly N negatives",
    "ntuple": 'FlagEmbedding {"query", "pos": [...], "neg": [...], "pos_scores", "neg_scores"}: one line per query',
    "rich": "ids, texts and, per negative, band, scores, rank, source and verdict: one line per query",
}
FILE_TYPE_LABELS = {"jsonl": "JSONL", "parquet": "Parquet"}
DOWNLOAD = {"jsonl": ("JSONL", "application/jsonl"), "parquet": ("Parquet", "application/vnd.apache.parquet")}
STRATEGY_HELP = {
    "top": "the hardest negatives left after cleaning",
    "random": "at random within a rank window",
    "simans": "sampled by SimANS weight (the informative middle)",
    "band-mix": "a mix of ambiguous and too-easy negatives",
}
defaults = config.ExportConfig()
#: The cleaning rules of an export: label -> (command-line flag, what the number means, default).
RULES = {
    "Budget": ("fn-budget", "share of plain top-N mining's false negatives the export may hold",
               defaults.fn_budget or 0.15),
    "Target rate": ("target-rate", "expected false-negative rate (once verdicts calibrate the risk)", 0.02),
    "Max risk": ("max-risk", "skip unreviewed candidates with P(false negative) above this", 0.05),
}


def _shorten(value, limit: int = 120):
    """A preview copy of an exported row with long strings cut (display only)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value[:6]] + (["…"] if len(value) > 6 else [])
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    return value

left, right = st.columns([1, 1], gap="large")
with left:
    with st.container(border=True):
        st.markdown("**Options**")
        fmt = st.radio("Format", list(FORMAT_HELP), key="x_fmt", horizontal=True, captions=None,
                       help="\n\n".join(f"**{k}**: {v}" for k, v in FORMAT_HELP.items()))
        st.caption(FORMAT_HELP[fmt])
        file_type = st.radio("File type", list(FILE_TYPE_LABELS), key="x_file_type", horizontal=True,
                             format_func=FILE_TYPE_LABELS.get,
                             help="FlagEmbedding reads only .json/.jsonl files; sentence-transformers reads both")
        scores = defaults.scores
        if fmt == "ntuple":
            scores = st.radio("Scores (pos_scores / neg_scores)", ["teacher", "model", "none"], key="x_scores",
                              horizontal=True, help="teacher: only where the training file gave them (FlagEmbedding "
                              "softmaxes scores without a temperature: model cosines teach little); model: the "
                              "model's cosines elsewhere; none: no scores")
        c1, c2 = st.columns(2)
        negatives = c1.number_input("Negatives per query", 1, 1000, defaults.negatives, key="x_neg")
        strategy = c2.selectbox("Choice of negatives", list(STRATEGY_HELP), key="x_strategy",
                                format_func=lambda s: f"{s}: {STRATEGY_HELP[s]}")
        labels = [f"{c} · {m}" for c, m, _ in pairs]
        choice = st.selectbox("Band configuration · model", labels, key="x_bands")
        band_config, model, _ = pairs[labels.index(choice)]
        relabel = st.toggle("Confirmed false negatives become positives", value=defaults.relabel, key="x_relabel",
                            help="off: they are dropped from the negatives (the default)")
        drop_susp = st.toggle("Drop unreviewed suspicious candidates", value=defaults.drop_unreviewed_suspicious,
                              key="x_drop", help="suspicious = likely false negatives; keep them out until reviewed")
        rule = st.radio("Cleaning", list(RULES), key="x_rule", horizontal=True, help="\n\n".join(
            f"**{k}**: {v[1]}" for k, v in RULES.items()))
        flag, meaning, default_value = RULES[rule]
        rule_value = st.number_input(meaning, 0.0, 1.0, float(default_value), step=0.01, format="%.3f",
                                     key=f"x_rule_{flag}")
        seed = st.number_input("Seed", 0, 2**31 - 1, defaults.seed, key="x_seed")
        go = st.button("Prepare export", type="primary", key="x_go", icon=":material/build:")

    cmd = ["auditor", "export", "--db", str(ui.db_path()), "--out", f"train.{fmt}.{file_type}", "--format", fmt,
           "--negatives", str(int(negatives)), "--strategy", strategy, "--band-config", band_config,
           "--seed", str(int(seed)), f"--{flag}", f"{rule_value:g}"]
    if relabel:
        cmd.append("--relabel")
    if fmt == "ntuple" and scores != defaults.scores:
        cmd += ["--scores", scores]
    if not drop_susp:
        cmd.append("--keep-unreviewed-suspicious")
    st.caption("The same from the command line (for pipelines and very large sets):")
    st.code(shlex.join(cmd), language="bash", wrap_lines=True)

if go:
    from auditor.export import export, new_app_export_folder, preview_rows

    # A fresh folder per export of this session; the last one is removed here, the rest when the app exits.
    out_dir = new_app_export_folder(previous=ss.get("x_dir"))
    ss["x_dir"] = str(out_dir)
    out = out_dir / f"train.{fmt}.{file_type}"
    bar = st.progress(0.0, text="Exporting…")
    try:
        risk = {"fn_budget": None, "target_rate": None, "max_risk": None, flag.replace("-", "_"): float(rule_value)}
        summary = export(ui.cursor(), out, fmt=fmt, file_type=file_type, negatives=int(negatives), strategy=strategy,
                         relabel=relabel, drop_unreviewed_suspicious=drop_susp, config=band_config, model=model,
                         scores=scores,
                         seed=int(seed), progress=ui.progress_callback(bar), **risk)
    except (StoreError, ValueError, OSError) as exc:
        bar.empty()
        st.error(ui.md(str(exc)))
        ss.pop("x_result", None)
    else:
        bar.empty()
        ss["x_result"] = {"path": str(out), "summary": summary, "preview": preview_rows(out, 3), "fmt": fmt}
        ui.warm_queue(summary.model, band_config)  # the default queue now follows these settings: its page, built behind

with right:
    result = ss.get("x_result")
    if not result:
        st.info("Choose the options and press **Prepare export** to preview and download the file.")
    else:
        s = result["summary"]
        with st.container(border=True):
            st.markdown(f"**{ui.md(Path(result['path']).name)}**")
            m = st.columns(3)
            m[0].metric("Lines", f"{s.rows:,}")
            m[1].metric("Queries", f"{s.queries_written:,}", f"of {s.queries_with_positives:,} with positives",
                        delta_color="off", delta_arrow="off")
            m[2].metric("Negatives", f"{s.negatives_written:,}")
            m = st.columns(3)
            m[0].metric(f"Short of {s.negatives_per_query}",
                        f"{s.short_queries:,}", help="queries that got fewer negatives than asked (none included)")
            m[1].metric("Confirmed FNs", f"{s.confirmed_false_negatives:,}",
                        "relabeled" if s.relabel else "dropped", delta_color="off",
                        delta_arrow="off", help="candidates an annotator confirmed as false negatives")
            m[2].metric("Positives", f"{s.positives_written:,}")
            if s.estimate:
                st.caption(ui.md(f"Cleaning: {s.rule}. {s.estimate['message']}."))
            path = Path(result["path"])
            if path.exists():
                label, mime = DOWNLOAD[s.file_type]
                with path.open("rb") as fh:
                    st.download_button(f"Download {label}", fh, file_name=path.name, mime=mime,
                                       type="primary", icon=":material/download:", key="x_download")
        st.markdown("**Preview** (first lines; long texts shortened here, not in the file)")
        with st.container(height=300, border=False):
            for row in result["preview"]:
                st.code(json.dumps(_shorten(row), ensure_ascii=False, indent=1), language="json", wrap_lines=True)

st.divider()
st.subheader("Statistics")
st.caption(ui.md(f"Band configuration '{band_config}', model {model}; short queries counted for {int(negatives)} "
                 "negatives."))
try:
    report = stats.compute_stats(con, config=band_config, model=model, negatives=int(negatives))
except (StoreError, ValueError) as exc:
    st.error(ui.md(str(exc)))
else:
    stats_summary(report)
    d1, d2 = st.columns(2)
    d1.download_button("Download statistics (JSON)", json.dumps(report, indent=2, default=str),
                       file_name="stats.json", mime="application/json", key="x_stats_download",
                       icon=":material/download:")
    # The report inlines plotly.js (a few MB): built when asked for, for the statistics on screen.
    report_key = json.dumps([band_config, model, int(negatives), report.get("verdicts", {}).get("events")])
    if ss.get("x_report_key") != report_key:
        ss.pop("x_report", None)
    if "x_report" not in ss:
        if d2.button("Prepare the HTML report", key="x_report_go", icon=":material/description:",
                     help="one self-contained file with the plots, readable offline (what `auditor stats --report` "
                          "writes)"):
            from auditor.report import render_html

            with st.spinner("Building the report…"):
                ss["x_report"] = render_html(report)
                ss["x_report_key"] = report_key
            st.rerun()
    else:
        d2.download_button("Download the HTML report", ss["x_report"], file_name="report.html", mime="text/html",
                           key="x_report_download", icon=":material/download:", type="primary")
