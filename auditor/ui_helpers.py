"""Words and small look-ups the app (and any other front end) shows; no Streamlit here.

Kept out of the pages so the explanation of a band rule is one tested function, the same wherever it is shown.
"""

from __future__ import annotations

import html
import json
import math
import re
import stat
from pathlib import Path
from typing import Any

import duckdb

from auditor.config import BandConfig

#: What annotators read on the buttons and in the history: the decision, not the jargon.
VERDICT_LABELS = {"false_negative": "Relevant — a false negative", "true_negative": "Not relevant",
                  "unsure": "Unsure"}
VERDICT_KEYS = {"false_negative": "F", "true_negative": "T", "unsure": "U"}

#: The band rules in plain words (the stored rule names are internal).
RULE_LABELS = {
    "inversion": "Scores at or above the positive",
    "near_duplicate": "Near-duplicate of a positive",
    "cross_encoder": "Cross-encoder ranks it at or above the positive",
    "second_opinion": "Cross-encoder ranks it at or above the positive",
    "relative_margin": "Close to the positive (relative margin)",
    "absolute_margin": "Close to the positive (absolute margin)",
    "absolute_cap": "High similarity (absolute cap)",
    "top_rank": "Top of the model's search",
    "consensus": "Top of several retrievers at once",
    "simans": "Informative middle (SimANS weight)",
    "low_weight": "Far from the positive (low SimANS weight)",
    "easy_rank": "Ranked too low to matter",
}


def rule_label(rule: str | None) -> str:
    return RULE_LABELS.get((rule or "").strip(), (rule or "no rule recorded").replace("_", " ").capitalize())


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def explain_rule(rule: str | None, candidate: dict[str, Any], cfg: BandConfig | None = None) -> str:
    """Why a candidate sits in its band, in one sentence, e.g.
    "scores 0.97 x the positive: above the 95% relative-margin rule".

    ``candidate`` needs s_neg, s_pos_min, delta, ratio (and sim_to_pos, weight, rank where the rule uses them).
    """
    cfg = cfg or BandConfig()
    s_neg, s_pos = candidate.get("s_neg"), candidate.get("s_pos_min")
    delta, ratio = candidate.get("delta"), candidate.get("ratio")
    rule = (rule or "").strip()
    if rule == "relative_margin":
        pct = round(100 * (1 - (cfg.relative_margin or 0.0)))
        return f"scores {_f(ratio)} x the positive: above the {pct}% relative-margin rule"
    if rule == "absolute_margin":
        return (
            f"only {_f(-delta if delta is not None else None)} below the positive: within the "
            f"{_f(cfg.absolute_margin)} margin rule"
        )
    if rule == "absolute_cap":
        return f"scores {_f(s_neg)}: at or above the absolute cap {_f(cfg.absolute_cap)}"
    if rule == "inversion":
        return f"scores {_f(s_neg)}, at or above the labeled positive ({_f(s_pos)}): an inversion"
    if rule == "near_duplicate":
        return (
            f"very close to a labeled positive (similarity {_f(candidate.get('sim_to_pos'))} >= "
            f"{_f(cfg.near_duplicate)})"
        )
    if rule in ("cross_encoder", "second_opinion"):
        return (
            f"the cross-encoder scores it {_f(candidate.get('ce_neg'))}, at or above the positive "
            f"({_f(candidate.get('ce_pos'))})"
        )
    if rule == "top_rank":
        return (
            f"ranked {candidate.get('rank')} in the model's search: within the top {cfg.top_rank}, where unlabeled "
            "positives concentrate"
        )
    if rule == "consensus":
        return (
            f"#{candidate.get('fused_rank')} of its query once the dense model, BM25 and closeness to the positive "
            f"are combined: within the top {cfg.consensus_rank}, where several independent views agree"
        )
    if rule == "easy_rank":
        return f"ranked {candidate.get('rank')}, beyond rank {cfg.easy_rank}: too easy whatever its score"
    if rule in ("simans", "low_weight", "ambiguous", "too_easy", "margin"):
        w = candidate.get("weight")
        below = f"{_f(-delta)} below the positive" if delta is not None and delta <= 0 else f"delta {_f(delta)}"
        if w is not None and w >= cfg.ambiguous_min_weight:
            return f"{below}: in the informative middle (SimANS weight {_f(w)} >= {_f(cfg.ambiguous_min_weight)})"
        return f"{below}: far from the positive (SimANS weight {_f(w)} < {_f(cfg.ambiguous_min_weight)})"
    return f"rule: {rule}" if rule else "no rule recorded"


def band_config_of(con: duckdb.DuckDBPyConnection, name: str) -> BandConfig:
    """The thresholds of a saved band configuration, or the defaults when it was never saved."""
    try:
        from auditor.bands import load_band_config

        return load_band_config(con, name)
    except ImportError:
        pass
    except Exception:
        return BandConfig()
    row = con.execute("SELECT params FROM band_configs WHERE name = ?", [name]).fetchone()
    if row is None:
        return BandConfig()
    params = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return BandConfig.from_json(params)


def banded_pairs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(band config, model, candidates) for every configuration that has bands, biggest first."""
    return [
        (c, m, int(n))
        for c, m, n in con.execute(
            "SELECT config, model, count(*) FROM bands GROUP BY config, model "
            "ORDER BY (config = 'default') DESC, 3 DESC, 1, 2"
        ).fetchall()
    ]


def candidate_sources(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the candidate sources in the store ('given', mining runs, ...)."""
    return [r[0] for r in con.execute("SELECT DISTINCT source FROM candidates ORDER BY 1").fetchall()]


def percentile_range(
    con: duckdb.DuckDBPyConnection, column: str, model: str, *, where: str | None = None, q: float = 0.005
) -> tuple[float | None, float | None, int]:
    """(low, high, values): the x range of a histogram of a ``scored`` column for ``model`` that a few extreme values
    cannot stretch (a ratio over a near-zero positive runs to hundreds): the q-th to (1-q)-th percentile, and no
    further than three interquartile ranges beyond the quartiles (which also holds on a handful of values).
    ``column`` and ``where`` are the caller's own SQL, never user text."""
    cond = f" AND ({where})" if where else ""
    lo, q1, q3, hi, n = con.execute(
        f"""SELECT quantile_cont(x, {q}), quantile_cont(x, 0.25), quantile_cont(x, 0.75), quantile_cont(x, {1 - q}),
                   count(*) FROM (
                SELECT {column}::DOUBLE AS x FROM scored WHERE model = ? AND {column} IS NOT NULL
                  AND isfinite({column}::DOUBLE){cond})""",
        [model],
    ).fetchall()[0]
    if not n:
        return None, None, 0
    iqr = q3 - q1
    return max(lo, q1 - 3 * iqr), min(hi, q3 + 3 * iqr), int(n)


def band_counts_by_source(con: duckdb.DuckDBPyConnection, config: str, model: str) -> dict[str, dict[str, int]]:
    """{source: {band: candidates}} of the stored bands of (config, model), aggregated in SQL.

    A candidate found by two sources counts once under each.
    """
    out: dict[str, dict[str, int]] = {}
    for source, band, n in con.execute(
        """
        SELECT c.source, b.band, count(*) FROM bands b
        JOIN (SELECT DISTINCT query_id, doc_id, source FROM candidates) c USING (query_id, doc_id)
        WHERE b.config = ? AND b.model = ? GROUP BY ALL ORDER BY 1, 2
        """,
        [config, model],
    ).fetchall():
        out.setdefault(source, {})[band] = int(n)
    return out


def scored_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Models with scores in the store, the most recently scored first."""
    try:
        from auditor.bands import latest_model

        latest = latest_model(con)
    except ImportError:
        latest = None
    models = [r[0] for r in con.execute("SELECT DISTINCT model FROM scores ORDER BY 1").fetchall()]
    if latest in models:
        models.remove(latest)
        models.insert(0, latest)
    return models


def scores_version(con: duckdb.DuckDBPyConnection) -> tuple:
    """A cheap fingerprint that changes whenever scores or stored bands change (mining and band assignment both
    write ``band_configs.created_at``), so aggregates of them can be cached between page runs."""
    return tuple(
        con.execute(
            "SELECT (SELECT count(*) FROM scores), (SELECT count(*) FROM bands), "
            "(SELECT max(created_at) FROM band_configs)::VARCHAR, (SELECT count(*) FROM candidates)"
        ).fetchone()
    )


def progress_counts(con: duckdb.DuckDBPyConnection, model: str, config: str, annotator: str) -> dict[str, int]:
    """Items of (config, model), how many have a verdict in force (anyone's), and how many of this annotator's."""
    total, done, mine = con.execute(
        """
        SELECT (SELECT count(*) FROM bands WHERE config = $c AND model = $m),
               (SELECT count(*) FROM (SELECT DISTINCT v.query_id, v.doc_id FROM current_verdicts v
                                      JOIN bands b ON b.config = $c AND b.model = $m AND b.query_id = v.query_id
                                       AND b.doc_id = v.doc_id)),
               (SELECT count(*) FROM current_verdicts WHERE annotator = $a)
        """,
        {"c": config, "m": model, "a": annotator},
    ).fetchall()[0]
    return {"total": int(total), "done": int(done), "mine": int(mine)}


def annotator_verdicts(con: duckdb.DuckDBPyConnection, annotator: str) -> int:
    """How many items ``annotator`` has a standing (not undone) verdict on."""
    return int(con.execute("SELECT count(*) FROM current_verdicts WHERE annotator = ?", [annotator]).fetchone()[0])


# --------------------------------------------------------------------------------------------------------------
# the review screen: passages with the query's words marked, positives that matter


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: Words too common to be worth marking (English function words).
STOPWORDS = frozenset(
    "a an and are as at be been but by can do does for from had has have how if in into is it its may more most no "
    "not of on or such than that the their then there these they this those to was were what when where which while "
    "who why will with would about also any each other over under between through".split()
)


def query_words(query: str) -> set[str]:
    """Lower-cased content words of a query (3+ characters, not a stopword)."""
    return {w.lower() for w in _WORD.findall(query or "") if len(w) >= 3 and w.lower() not in STOPWORDS}


def _stem(word: str) -> str:
    """A light suffix strip, so 'flows' matches 'flow' and 'heated' matches 'heat'."""
    w = word.lower()
    for suffix in ("ations", "ation", "ings", "ing", "ies", "ed", "es", "s"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def highlight_html(text: str | None, words: set[str], limit: int | None = None) -> str:
    """``text`` as escaped HTML with the words shared with the query in ``<mark>``; cut at ``limit`` characters.

    Everything from the data goes through html.escape: markup in a passage shows as text.
    """
    text = text or ""
    if limit is not None and len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > limit * 0.8 else limit] + " …"
    stems = {_stem(w) for w in words}
    out, pos = [], 0
    for m in _WORD.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        word = m.group(0)
        if len(word) >= 3 and _stem(word) in stems:
            out.append(f"<mark>{html.escape(word)}</mark>")
        else:
            out.append(html.escape(word))
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def positive_marks(
    con: duckdb.DuckDBPyConnection, model: str, query_id: str, doc_id: str, positive_ids: list[str]
) -> dict[str, dict[str, float]]:
    """Per positive: ``s_pos`` = sim(query, positive) and ``sim`` = sim(positive, candidate), from the stored vectors.

    The positive with the lowest ``s_pos`` is the anchor the margin rules compare with (BandConfig.anchor = min); the
    one with the highest ``sim`` is the one the near-duplicate rule names. Empty when the vectors are not stored.
    """
    if not positive_ids:
        return {}
    rows = con.execute(
        """
        WITH texts AS (
            SELECT 'q' AS kind, ? AS id, text_hash, 'query' AS role FROM queries WHERE query_id = ?
            UNION ALL
            SELECT 'd', doc_id, text_hash, 'document' FROM documents WHERE doc_id = ANY(?::VARCHAR[])
        )
        SELECT t.kind, t.id, e.vector FROM texts t
        JOIN embeddings e ON e.model = ? AND e.role = t.role AND e.text_hash = t.text_hash
        """,
        [query_id, query_id, [*positive_ids, doc_id], model],
    ).fetchall()
    import numpy as np

    q = next((np.asarray(v, dtype=np.float32) for k, _, v in rows if k == "q"), None)
    docs = {i: np.asarray(v, dtype=np.float32) for k, i, v in rows if k == "d"}
    cand = docs.get(doc_id)
    if q is None or cand is None:
        return {}
    return {p: {"s_pos": float(docs[p] @ q), "sim": float(docs[p] @ cand)} for p in positive_ids if p in docs}


# --------------------------------------------------------------------------------------------------------------
# plain text for Plotly, safe messages, server paths


def plotly_text(text: object) -> str:
    """A name from the data or a user, safe as a Plotly label: its HTML subset (<a href>, <b>, ...) shows as text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: Field names ingest reports that are ours (from the formats), not the data's.
_KNOWN_FIELDS = {"query", "anchor", "pos", "neg", "positive", "negative", "pos_scores", "neg_scores", "prompt",
                 "_id", "text", "title", "corpus-id", "query-id", "score", "negative_1"}


def safe_ingest_message(exc: Exception, where_shown: str | None = None) -> str:
    """An ingest error for the app without any of the file's content: where (file and line, or ``where_shown`` in
    its place: an upload's own name instead of a temporary path), which of our fields,
    and what kind of problem. Quoted values, key lists and reader details (which may echo a line) are left out; the
    full message is one `auditor ingest` away on the server."""
    where = getattr(exc, "where", None)
    reason = getattr(exc, "reason", None)
    if where is None or reason is None:
        return "the file could not be read" + (f" ({type(exc).__name__})" if not isinstance(exc, OSError) else "")
    shown = where_shown or str(where)
    field = getattr(exc, "field", None)
    text = f"{shown}: "
    if field and str(field) in _KNOWN_FIELDS:
        text += f"field '{field}': "
    reason = str(reason)
    if reason.startswith(("cannot read", "malformed JSON")):
        reason = reason.split(":", 1)[0]
    reason = re.sub(r"\((keys|columns)?:?[^)]*\)", "", reason)
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "…", reason)
    reason = re.sub(r"\s+", " ", reason).strip(" :;,")
    text += reason[:200]
    more = getattr(exc, "more", 0)
    if more:
        text += f" (and {more} more bad line{'s' if more > 1 else ''})"
    return text


class PathRefused(ValueError):
    """A server path the app will not read (outside the data root, a special file, too large)."""


#: A Hugging Face hub id, `name` or `org/name` (loaded from the local model cache, not from a folder one names).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def check_model_field(value: str, root: Path) -> str:
    """What the Load page's model field may hand to mining: the shipped model's names, a model folder inside the
    data root (given relative to it or absolute; returned as an absolute path), or a hub id that names no folder.
    Anything else that names a server folder is refused, as server paths for ingest are (auditor.embed would load
    whatever folder it is given)."""
    from auditor.encoder import DEFAULT_ALIASES

    value = (value or "").strip()
    if value in DEFAULT_ALIASES:
        return value
    root = Path(root).resolve()
    where = f"model folders must lie inside the data root {root}"
    if not value:
        raise PathRefused(f"give a model name; {where}")
    raw = Path(value).expanduser()
    target = (raw if raw.is_absolute() else root / raw).resolve()
    if target.exists():
        if target != root and root not in target.parents:
            raise PathRefused(f"{where}: {value} is outside it")
        if not target.is_dir():
            raise PathRefused(f"{value} is a file: give the model's folder (inside the data root)")
        return str(target)
    if raw.is_absolute() or value.startswith((".", "~")) or ".." in value or not _HUB_ID.fullmatch(value):
        raise PathRefused(f"{where}: there is no folder {value} in it")
    if Path(value).exists():  # relative to the app's working folder, which mining would read as a model folder
        raise PathRefused(f"{where}: {value} names a folder outside it")
    return value


def check_server_path(path: str, root: Path, max_bytes: int) -> Path:
    """The resolved ``path`` if the app may ingest it: inside ``root`` (after following links), a regular file or a
    folder of regular files, each under ``max_bytes`` and all together under ``4 * max_bytes``."""
    root = Path(root).resolve()
    raw = Path(path.strip()).expanduser()
    target = (raw if raw.is_absolute() else root / raw).resolve()
    if target != root and root not in target.parents:
        raise PathRefused(f"only files inside the data root {root} can be loaded")
    if not target.exists():
        raise PathRefused(f"no file or folder at {target}")
    files = [target] if not target.is_dir() else [p for p in target.rglob("*")]
    total = 0
    for f in files:
        real = f.resolve()
        if real != root and root not in real.parents:
            raise PathRefused(f"{f.name} points outside the data root")
        mode = real.stat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise PathRefused(f"{f.name} is not a regular file (device, pipe or socket): refused")
        size = real.stat().st_size
        if size > max_bytes:
            raise PathRefused(f"{f.name} is {size / 1e6:,.0f} MB, over the app's limit of {max_bytes / 1e6:,.0f} MB: "
                              "use `auditor ingest` on the server")
        total += size
    if total > 4 * max_bytes:
        raise PathRefused(f"the folder holds {total / 1e6:,.0f} MB, over the app's limit: use `auditor ingest`")
    return target


def recent_verdicts(con: duckdb.DuckDBPyConnection, annotator: str | None, n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` latest verdicts in force of ``annotator`` (None: of everyone), newest first (the Review page's
    history; the Team page's list)."""
    cur = con.execute(
        """SELECT query_id, doc_id, verdict, note, band, queue_mode, sampling_prob,
                  strftime(created_at, '%Y-%m-%d %H:%M') AS "when", annotator
           FROM current_verdicts WHERE $a IS NULL OR annotator = $a ORDER BY event_id DESC LIMIT $n""",
        {"a": annotator, "n": n})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def apply_history_edits(
    con: duckdb.DuckDBPyConnection, annotator: str, rows: list[dict[str, Any]], edited: dict[Any, dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """Turn verdicts changed in the history table (``edited``: row index -> {"verdict": label}) into new verdict
    events by ``annotator``, with the band, queue mode and sampling probability of the verdict they replace.
    Returns (query_id, doc_id, verdict) of each change; unchanged rows write nothing."""
    from auditor.review import record_verdict

    by_label = {v: k for k, v in VERDICT_LABELS.items()}
    out = []
    for idx, change in sorted(edited.items(), key=lambda kv: int(kv[0])):
        row = rows[int(idx)]
        new = by_label.get((change or {}).get("verdict"))
        if new is None or new == row["verdict"]:
            continue
        record_verdict(con, query_id=row["query_id"], doc_id=row["doc_id"], verdict=new, annotator=annotator,
                       note=row.get("note"), band=row.get("band"), queue_mode=row.get("queue_mode"),
                       sampling_prob=row.get("sampling_prob"))
        out.append((row["query_id"], row["doc_id"], new))
    return out


# --------------------------------------------------------------------------------------------------------------
# review guidelines (Markdown set by the lead, kept in the store's meta table)


def get_guidelines(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT value FROM meta WHERE key = 'guidelines'").fetchall()
    return row[0][0] if row else ""


def set_guidelines(con: duckdb.DuckDBPyConnection, text: str) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES ('guidelines', ?)", [text or ""])


#: The plain forms, ![alt](url) and ![alt][ref], shown as their alt text.
_MD_IMAGE = re.compile(r"!\[([^\]\[\\]*)\]\([^)]*\)")
_MD_REF_IMAGE = re.compile(r"!\[([^\]\[\\]*)\]\[[^\]]*\]")
#: Every Markdown image starts with "![" (inline, nested in a link, reference, collapsed or shortcut reference);
#: no other syntax makes one (raw HTML stays text in st.markdown).
_MD_IMAGE_OPENER = re.compile(r"!(?=\[)")


def safe_markdown(text: str) -> str:
    """The lead's guidelines as Markdown the app may render, with no image in any form (the app never fetches
    anything a user names). Plain images become their alt text; then the "!" of every "![" left (and of any the first
    step made) becomes the character reference "&#33;", which shows as "!" but can never start syntax, so what
    would have been an image is a plain link or text. Raw HTML stays text (st.markdown escapes it)."""
    text = _MD_REF_IMAGE.sub(lambda m: m.group(1), _MD_IMAGE.sub(lambda m: m.group(1), text or ""))
    return _MD_IMAGE_OPENER.sub("&#33;", text)
