"""Plotly figures of pre-aggregated bin counts (from auditor.bands.histogram); no data access here.

Every active threshold is drawn, and the x axis always reaches it even where the (percentile-clipped) bins do not.
Names from the data (sources, configurations) pass through plotly_text: Plotly's HTML subset shows as text.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from auditor.ui_helpers import plotly_text
from pages._common import BAND_COLORS, BAND_LABELS

_LAYOUT = dict(
    template="plotly_white",
    height=320,
    margin=dict(l=10, r=10, t=40, b=10),
    bargap=0.02,
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
)


def _centers(h: dict) -> list[float]:
    e = h["edges"]
    return [(e[i] + e[i + 1]) / 2 for i in range(len(e) - 1)]


def _width(h: dict) -> float:
    e = h["edges"]
    return (e[1] - e[0]) if len(e) > 1 else 1.0


def _bars(h: dict, name: str, color: str, opacity: float = 0.65) -> go.Bar:
    return go.Bar(x=_centers(h), y=h["counts"], width=_width(h), name=name, marker_color=color, opacity=opacity,
                  hovertemplate="%{x:.3f}: %{y:,}<extra>" + name + "</extra>")


def _vline(fig: go.Figure, x: float, label: str, color: str, dash: str = "dash") -> None:
    fig.add_vline(x=x, line_color=color, line_dash=dash, line_width=2,
                  annotation_text=label, annotation_position="top", annotation_font_color=color)


def _reach(fig: go.Figure, h: dict, *xs: float | None) -> None:
    """Set the x range to the histogram's bins widened to every threshold line, so no drawn rule falls off."""
    e = h.get("edges") or []
    points = [x for x in (*(e[:1] + e[-1:]), *xs) if x is not None]
    if not points:
        return
    lo, hi = min(points), max(points)
    pad = (hi - lo) * 0.04 or 0.05
    fig.update_xaxes(range=[lo - pad, hi + pad])


def clip_note(h: dict) -> str:
    """Words for how many values the percentile clip left out of a histogram's bins."""
    clipped = h.get("clipped") or 0
    if not clipped:
        return ""
    return (f"Axis clipped to the bulk of the values (0.5th–99.5th percentile, at most 3 interquartile ranges past "
            f"the quartiles): {clipped:,} of {h.get('total', 0):,} lie outside (still counted in the bands).")


def scores_figure(h_pos: dict, h_neg: dict, absolute_cap: float | None) -> go.Figure:
    """s_pos and s_neg on shared bins; the absolute cap (when on) drawn as a line."""
    fig = go.Figure([_bars(h_pos, "s_pos (labeled positive)", "#2563EB"), _bars(h_neg, "s_neg (candidate)", "#DC2626")])
    if absolute_cap is not None:
        _vline(fig, absolute_cap, f"absolute cap {absolute_cap:.2f}", BAND_COLORS["suspicious"])
    fig.update_layout(barmode="overlay", title="Similarity to the query", xaxis_title="cosine similarity",
                      yaxis_title="candidates", **_LAYOUT)
    _reach(fig, h_neg if h_neg.get("edges") else h_pos, absolute_cap)
    return fig


def delta_figure(
    h: dict, absolute_margin: float | None, simans_a: float, simans_b: float, min_weight: float,
    false_negatives: dict | None = None, true_negatives: dict | None = None,
) -> go.Figure:
    """delta = s_neg - s_pos with the inversion line, the margin rule and the SimANS (ambiguous) window shaded; the
    verdicts so far (confirmed false and true negatives, same bins) laid over it on a second axis."""
    fig = go.Figure([_bars(h, "candidates", "#6366F1", 0.85)])
    overlay = [(v, name, color) for v, name, color in (
        (false_negatives, "confirmed false negatives", BAND_COLORS["suspicious"]),
        (true_negatives, "confirmed true negatives", "#16A34A")) if v and v.get("n")]
    for v, name, color in overlay:
        fig.add_trace(go.Scatter(x=_centers(v), y=v["counts"], name=name, mode="lines+markers", yaxis="y2",
                                 line={"color": color, "width": 2}, marker={"size": 5},
                                 hovertemplate="%{x:.3f}: %{y:,}<extra>" + name + "</extra>"))
    if 0 < min_weight < 1 and simans_a > 0:
        half = math.sqrt(-math.log(min_weight) / simans_a)
        fig.add_vrect(x0=simans_b - half, x1=simans_b + half, fillcolor=BAND_COLORS["ambiguous"], opacity=0.12,
                      line_width=0, annotation_text="ambiguous window", annotation_position="top left")
    _vline(fig, 0.0, "inversion", BAND_COLORS["suspicious"], "solid")
    if absolute_margin is not None:
        _vline(fig, -absolute_margin, f"margin -{absolute_margin:.2f}", BAND_COLORS["suspicious"])
    fig.update_layout(title="Margin to the positive (delta = s_neg - s_pos)", xaxis_title="delta",
                      yaxis_title="candidates", showlegend=bool(overlay), **_LAYOUT)
    if overlay:
        fig.update_layout(yaxis2={"title": "verdicts", "overlaying": "y", "side": "right", "rangemode": "tozero",
                                  "showgrid": False},
                          legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0})
    half = math.sqrt(-math.log(min_weight) / simans_a) if 0 < min_weight < 1 and simans_a > 0 else 0.0
    _reach(fig, h, 0.0, -absolute_margin if absolute_margin is not None else None, simans_b - half, simans_b + half)
    return fig


def ratio_figure(h: dict, relative_margin: float | None) -> go.Figure:
    """ratio = s_neg / s_pos with the relative-margin rule drawn at 1 - margin."""
    fig = go.Figure([_bars(h, "candidates", "#0EA5E9", 0.85)])
    _vline(fig, 1.0, "inversion (= the positive)", BAND_COLORS["suspicious"], "solid")
    if relative_margin is not None:
        _vline(fig, 1 - relative_margin, f"{100 * (1 - relative_margin):.1f}% of the positive",
               BAND_COLORS["suspicious"])
        fig.update_annotations(selector=dict(text=f"{100 * (1 - relative_margin):.1f}% of the positive"),
                               yshift=-18)
    fig.update_layout(title="Ratio to the positive (s_neg / s_pos)", xaxis_title="ratio", yaxis_title="candidates",
                      showlegend=False, **_LAYOUT)
    _reach(fig, h, 1.0, 1 - relative_margin if relative_margin is not None else None)
    return fig


def closeness_figure(h: dict, near_duplicate: float | None) -> go.Figure:
    """sim(positive, candidate) with the near-duplicate rule drawn."""
    fig = go.Figure([_bars(h, "candidates", "#8B5CF6", 0.85)])
    if near_duplicate is not None:
        _vline(fig, near_duplicate, f"near-duplicate {near_duplicate:.2f}", BAND_COLORS["suspicious"])
    fig.update_layout(title="Closeness to the nearest labeled positive", xaxis_title="cosine similarity",
                      yaxis_title="candidates", showlegend=False, **_LAYOUT)
    _reach(fig, h, near_duplicate)
    return fig


def rank_figure(h: dict, top_rank: int | None, easy_rank: int | None) -> go.Figure:
    """Rank in the model's search with the top-rank (suspicious) and easy-rank (too easy) rules drawn."""
    fig = go.Figure([_bars(h, "candidates", "#14B8A6", 0.85)])
    if top_rank is not None:
        _vline(fig, top_rank + 0.5, f"top {top_rank}: suspicious", BAND_COLORS["suspicious"])
    if easy_rank is not None:
        _vline(fig, easy_rank + 0.5, f"beyond {easy_rank}: too easy", BAND_COLORS["too_easy"])
    fig.update_layout(title="Rank in the model's search", xaxis_title="rank", yaxis_title="candidates",
                      showlegend=False, **_LAYOUT)
    _reach(fig, h, top_rank + 0.5 if top_rank is not None else None,
           easy_rank + 0.5 if easy_rank is not None else None)
    return fig


def band_bars(counts: dict[str, dict[str, int]], title: str, x_title: str) -> go.Figure:
    """Stacked bars: counts[group][band] for each group (a source, a rule, ...)."""
    groups = list(counts)
    shown = [plotly_text(g) for g in groups]  # a source named "<a href=...>" is a name, not a link
    fig = go.Figure(
        [
            go.Bar(x=shown, y=[counts[g].get(b, 0) for g in groups], name=BAND_LABELS[b], marker_color=color)
            for b, color in BAND_COLORS.items()
        ]
    )
    fig.update_layout(barmode="stack", title=title, xaxis_title=x_title, yaxis_title="candidates", **_LAYOUT)
    return fig
