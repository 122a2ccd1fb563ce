"""A self-contained HTML report of :func:`auditor.stats.compute_stats` for data leads.

Plotly's JavaScript is embedded once (``include_plotlyjs=True`` on the first figure), so the file opens offline and
can be mailed around. Every text that comes from the data (ids, source names, notes) goes through ``html.escape``.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from auditor.bands import BAND_COLOURS, BAND_LABELS



def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Any) -> str:
    return "–" if not ci else f"{100 * ci[0]:.1f}% – {100 * ci[1]:.1f}%"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    figs: list[tuple[str, Any]] = []
    hists = stats.get("scores", {}).get("histograms", {})

    def bars(h: dict[str, Any], name: str, colour: str) -> Any:
        edges = h.get("edges") or []
        mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        return go.Bar(x=mids, y=h.get("counts", []), name=name, marker_color=colour, opacity=0.65)

    if hists.get("s_neg", {}).get("counts"):
        fig = go.Figure([bars(hists["s_pos"], "s_pos (per query, min over positives)", "#1f77b4"),
                         bars(hists["s_neg"], "s_neg (per candidate)", "#d62728")])
        cap = (stats.get("band_config") or {}).get("absolute_cap")
        if cap is not None:
            fig.add_vline(x=cap, line_dash="dash", annotation_text="absolute cap")
        fig.update_layout(barmode="overlay", title="Similarity of positives and candidate negatives",
                          xaxis_title="cosine similarity to the query", yaxis_title="count")
        figs.append(("scores", fig))
    if hists.get("delta", {}).get("counts"):
        fig = go.Figure([bars(hists["delta"], "delta = s_neg - s_pos", "#9467bd")])
        fig.add_vline(x=0, line_dash="dash", annotation_text="inversion (s_neg = s_pos)")
        b = (stats.get("band_config") or {}).get("simans_b")
        if b is not None:
            fig.add_vline(x=b, line_dash="dot", annotation_text="SimANS centre")
        fig.update_layout(title="Margin of each candidate below its query's positive", xaxis_title="delta",
                          yaxis_title="candidates")
        figs.append(("delta", fig))
    if hists.get("ratio", {}).get("counts"):
        fig = go.Figure([bars(hists["ratio"], "ratio = s_neg / s_pos", "#8c564b")])
        rm = (stats.get("band_config") or {}).get("relative_margin")
        if rm is not None:
            fig.add_vline(x=1 - rm, line_dash="dash", annotation_text=f"{1 - rm:.2f} x s_pos")
        fig.update_layout(title="Ratio of candidate to positive similarity (p5–p95)", xaxis_title="ratio",
                          yaxis_title="candidates")
        figs.append(("ratio", fig))
    bands = stats.get("bands")
    if bands:
        per_source = bands.get("per_source") or {}
        from auditor.ui_helpers import plotly_text

        names = [plotly_text(n) for n in per_source] or ["all"]  # source names are data: no Plotly links or markup
        data = []
        for band, colour in BAND_COLOURS.items():
            ys = [per_source[s].get(band, 0) for s in per_source] if per_source else [bands["counts"].get(band, 0)]
            data.append(go.Bar(x=names, y=ys, name=BAND_LABELS[band], marker_color=colour))
        fig = go.Figure(data)
        fig.update_layout(barmode="stack", title="Candidates per band and source", yaxis_title="candidates")
        figs.append(("bands", fig))
    verdicts = stats.get("verdicts")
    if verdicts and any(r.get("judged") for r in verdicts.get("per_band", [])):
        figs.append(("fn_band", _rate_figure(
            [r["band"] for r in verdicts["per_band"]], verdicts["per_band"],
            "False-negative rate per band (Wilson 95% interval)")))
    if verdicts and any(r.get("judged") for r in verdicts.get("per_rank_bucket", [])):
        figs.append(("fn_rank", _rate_figure(
            [f"rank {r['ranks']}" for r in verdicts["per_rank_bucket"]], verdicts["per_rank_bucket"],
            "False-negative rate against search rank (pooling bias)")))
    return figs


def _rate_figure(labels: list[str], rows: list[dict[str, Any]], title: str) -> Any:
    import plotly.graph_objects as go

    ys = [r.get("rate") or 0.0 for r in rows]
    lo = [max(0.0, (r.get("rate") or 0.0) - r["ci95"][0]) if r.get("ci95") else 0.0 for r in rows]
    hi = [max(0.0, r["ci95"][1] - (r.get("rate") or 0.0)) if r.get("ci95") else 0.0 for r in rows]
    text = [f"{r.get('false_negative', 0)}/{r.get('judged', 0)}" for r in rows]
    fig = go.Figure(go.Bar(x=labels, y=ys, text=text, textposition="outside",
                           error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo)))
    fig.update_layout(title=title, yaxis_title="share judged false negative", yaxis_range=[0, 1.05])
    return fig


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2rem}table{border-collapse:collapse;margin:.6rem 0 1.4rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}
.note{color:#555;font-size:.9rem}.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;
border-radius:6px;padding:.6rem 1rem;min-width:150px}.card b{display:block;font-size:1.4rem}
"""


def render_html(stats: dict[str, Any], title: str = "auditor report") -> str:
    """The report as one HTML string (Plotly JS inlined once)."""
    parts: list[str] = []
    shape = stats.get("shape", {})
    cards = [
        ("queries", shape.get("queries")), ("documents", shape.get("documents")),
        ("positives / query", _fmt(shape.get("positives_per_query_mean"), 2)),
        ("single-positive queries", _pct(shape.get("single_positive_share"))),
        ("candidates", shape.get("candidates")),
        ("inversion rate", _pct(stats.get("scores", {}).get("inversion_rate"))),
    ]
    est = (stats.get("verdicts") or {}).get("estimated_total_false_negatives") or {}
    if est.get("estimate") is not None:
        cards.append(("estimated false negatives", _fmt(est["estimate"], 0)))
    parts.append('<div class="cards">' + "".join(
        f'<div class="card"><b>{_e(v) if not isinstance(v, str) else v}</b>{_e(k)}</div>' for k, v in cards
    ) + "</div>")
    parts.append("<h2>Dataset shape</h2>")
    parts.append(_table(
        ["source", "candidates", "queries", "candidates per query"],
        [[_e(r["source"]), _fmt(r["candidates"]), _fmt(r["queries"]), _fmt(r["candidates_per_query"], 1)]
         for r in shape.get("per_source", [])],
    ))
    pr = stats.get("positive_rank")
    if pr:
        if "mrr" in pr:
            ks = [k for k in pr if k.startswith("success_at_")]
            parts.append("<h2>Rank of the labeled positive</h2>")
            parts.append(_table(["MRR@depth", "within depth", "median rank"] + [k.replace("_", " ") for k in ks],
                                [[_fmt(pr["mrr"]), _pct(pr["within_depth"]), _fmt(pr["median_rank"], 1)]
                                 + [_pct(pr[k]) for k in ks]]))
        parts.append(f'<p class="note">{_e(pr.get("note"))}</p>')
    bands = stats.get("bands")
    if bands:
        parts.append("<h2>Bands</h2>")
        parts.append(_table(["band", "candidates", "share"],
                            [[_e(b), _fmt(n), _pct(bands["shares"].get(b))] for b, n in bands["counts"].items()]))
        parts.append(_table(["rule that fired", "candidates"], [[_e(r), _fmt(n)] for r, n in bands["rules"].items()]))
    short = stats.get("short_queries")
    if short:
        parts.append(
            f"<p>{_fmt(short['count'])} queries ({_pct(short['share'])}) are left with fewer than "
            f"{_fmt(short['negatives'])} negatives, {_fmt(short['without_any'])} with none.</p>"
            f'<p class="note">{_e(short.get("note"))}</p>'
        )
    verdicts = stats.get("verdicts")
    if verdicts:
        parts.append("<h2>False negatives from the verdicts</h2>")
        parts.append(
            f"<p>{_fmt(verdicts['items_reviewed'])} items reviewed by {_fmt(verdicts['annotators'])} annotators "
            f"({_fmt(verdicts['events'])} events, {_fmt(verdicts['undos'])} undone).</p>"
        )
        parts.append(_table(
            ["band", "size", "judged", "false negatives", "rate", "95% interval", "sample", "estimated total"],
            [[_e(r["band"]), _fmt(r["size"]), _fmt(r["judged"]), _fmt(r["false_negative"]), _pct(r["rate"]),
              _ci(r["ci95"]), _e(r["sample"] or "–"), _fmt(r["estimated_false_negatives"], 1)]
             for r in verdicts["per_band"]],
        ))
        if est:
            parts.append(f'<p class="note">Estimated total: {_fmt(est.get("estimate"), 1)} ({_e(est.get("method"))}).'
                         + (" Some bands have only risk-ordered verdicts: their rates lean high."
                            if est.get("biased_upward") else "") + "</p>")
        parts.append(_table(["search rank", "judged", "false negatives", "rate", "95% interval"],
                            [[_e(r["ranks"]), _fmt(r["judged"]), _fmt(r["false_negative"]), _pct(r["rate"]),
                              _ci(r["ci95"])] for r in verdicts["per_rank_bucket"]]))
        rows = [[_e(r["source"]), _fmt(r["judged"]), _fmt(r["false_negative"]), _pct(r["rate"]), _ci(r["ci95"])]
                for r in verdicts["per_source"]]
        rows += [[_e(f"only {r['only_source']}"), _fmt(r["judged"]), _fmt(r["false_negative"]), _pct(r["rate"]),
                  _ci(r["ci95"])] for r in verdicts.get("only_in_one_source", [])]
        if rows:
            parts.append(_table(["source", "judged", "false negatives", "rate", "95% interval"], rows))
        ag = verdicts.get("agreement") or {}
        if ag.get("items"):
            parts.append(f"<p>Agreement on {_fmt(ag['items'])} doubly annotated items: Cohen's kappa "
                         f"{_fmt(ag['kappa'], 2)}, raw agreement {_pct(ag['agreement'])}.</p>")
    xe = stats.get("export_estimate")
    if xe:
        sel, a = xe["selection"], xe["audit"]
        parts.append("<h2>False negatives left in the export</h2>")
        parts.append(
            f"<p>{_fmt(sel['negatives'])} negatives per query ({_e(sel['rule'])}): {_fmt(xe['negatives'])} "
            f"negatives, mean s_neg {_fmt(xe['mean_s_neg'])}, {_fmt(xe['confirmed_true_negatives'])} of them "
            f"confirmed true negatives.</p>")
        parts.append(f"<p>{_e(xe['message'])}.</p>")
        parts.append(f"<p>Audit sample (a random {_pct(a['rate'])} of the export, every {_fmt(a['every'])}th item "
                     f"of the default review queue): {_fmt(a['reviewed'])} reviewed, {_fmt(a['pending'])} waiting.</p>")
    jk = stats.get("judged_at_k")
    if jk and jk.get("by_k"):
        parts.append("<h2>Judged@k</h2>")
        parts.append(_table(["k", "candidates", "judged (qrels)", "judged or reviewed"],
                            [[_fmt(r["k"]), _fmt(r["n"]), _pct(r["judged"]), _pct(r["judged_or_reviewed"])]
                             for r in jk["by_k"]]))
        parts.append(f'<p class="note">{_e(jk.get("note"))}</p>')

    figure_html = []
    for i, (name, fig) in enumerate(_figures(stats)):
        figure_html.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig-{name}"))
    raw = html.escape(json.dumps(stats, indent=1, default=str))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='sub'>model {_e(stats.get('model'))} · band configuration "
        f"{_e(stats.get('config'))} · generated {_e(stats.get('generated_at'))}</p>"
        + "".join(parts[:1])
        + "<h2>Plots</h2>" + "".join(figure_html)
        + "".join(parts[1:])
        + f"<details><summary>All figures (JSON)</summary><pre>{raw}</pre></details>"
        "</body></html>"
    )


def write_report(stats: dict[str, Any], out_path: str | Path, title: str = "auditor report") -> Path:
    """Write the HTML report atomically (temporary file in the same folder, then rename)."""
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(render_html(stats, title), encoding="utf-8")
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path
