"""Drawing of the statistics dict of auditor.stats.compute_stats (numbers only come from there)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._common import BAND_COLORS, BAND_LABELS


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Any) -> str:
    if not ci:
        return ""
    lo, hi = ci
    return f"{100 * lo:.1f}–{100 * hi:.1f}%"


def stats_summary(report: dict[str, Any]) -> None:
    """Key figures of a statistics report: shape, geometry, bands, false-negative rates with intervals."""
    shape = report.get("shape", {})
    scores = report.get("scores", {})
    prank = report.get("positive_rank", {})
    short = report.get("short_queries", {})
    m = st.columns(6)
    m[0].metric("Queries", f"{shape.get('queries', 0):,}", border=True)
    m[1].metric("Documents", f"{shape.get('documents', 0):,}", border=True)
    m[2].metric("1-positive queries", _pct(shape.get("single_positive_share")), border=True,
                help="share of queries with exactly one labeled positive (pooling bias makes this high)")
    m[3].metric("Inversion rate", _pct(scores.get("inversion_rate")), border=True,
                help="share of candidates scoring at or above their query's positive")
    m[4].metric("Positive MRR", f"{prank['mrr']:.3f}" if prank.get("mrr") is not None else "n/a",
                border=True, help="mean reciprocal rank of the labeled positive in the model's search. "
                + (prank.get("note") or ""))
    m[5].metric(f"Short of {short.get('negatives', '?')}", f"{short.get('count', 0):,}", border=True,
                help=f"queries left with fewer than {short.get('negatives', '?')} negatives. {short.get('note') or ''}")

    verdicts = report.get("verdicts") or {}
    per_band = verdicts.get("per_band") or []
    if per_band:
        left, right = st.columns([3, 2], gap="large")
        with left:
            st.markdown("**False negatives per band** (from the verdicts, 95% Wilson intervals)")
            df = pd.DataFrame(
                [
                    {
                        "band": BAND_LABELS.get(r["band"], r["band"]),
                        "size": r.get("size"),
                        "reviewed": r.get("reviewed"),
                        "false negatives": r.get("false_negative"),
                        "rate": _pct(r.get("rate")) if r.get("rate") is not None else "",
                        "95% interval": _ci(r.get("ci95")),
                        "estimated in band": (
                            f"{r['estimated_false_negatives']:,.0f}" if r.get("estimated_false_negatives") is not None
                            else ""
                        ),
                        "sample": r.get("sample") or "",
                    }
                    for r in per_band
                ]
            )
            st.dataframe(df, hide_index=True, width="stretch")
            est = verdicts.get("estimated_total_false_negatives") or {}
            e = st.columns(3)
            e[0].metric("Verdict events", f"{verdicts.get('events', 0):,}")
            e[1].metric("Confirmed false negatives", f"{est.get('confirmed_total', 0):,}")
            e[2].metric(
                "Estimated total", f"{est['estimate']:,.0f}" if est.get("estimate") is not None else "n/a",
                help=est.get("method"),
            )
            if est.get("biased_upward"):
                st.caption("Some bands were only reviewed in risk order: their rates lean high. Use the stratified "
                           "queue for unbiased rates.")
        with right:
            buckets = verdicts.get("per_rank_bucket") or []
            if any(b.get("judged") for b in buckets):
                fig = go.Figure(
                    go.Bar(
                        x=[b["ranks"] for b in buckets],
                        y=[(b.get("rate") or 0) * 100 for b in buckets],
                        marker_color=BAND_COLORS["suspicious"],
                        error_y=dict(
                            type="data", symmetric=False,
                            array=[((b["ci95"][1] - (b["rate"] or 0)) * 100) if b.get("ci95") else 0 for b in buckets],
                            arrayminus=[(((b["rate"] or 0) - b["ci95"][0]) * 100) if b.get("ci95") else 0
                                        for b in buckets],
                        ),
                    )
                )
                fig.update_layout(title="False-negative rate by rank (pooling bias)", xaxis_title="rank",
                                  yaxis_title="% false negatives", template="plotly_white", height=300,
                                  margin=dict(l=10, r=10, t=40, b=10))
                st.plotly_chart(fig, key="fig_rank_rate")
            else:
                st.caption("No verdicts yet: review some items to see false-negative rates by rank.")
            kappa = (verdicts.get("agreement") or {}).get("kappa")
            if kappa is not None:
                st.metric("Agreement (Cohen's kappa)", f"{kappa:.2f}")
    with st.expander("All statistics (JSON)"):
        st.json(report, expanded=1)
