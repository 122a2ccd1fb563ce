"""Property tests of ingest over every input format: random valid files with random damage.

Each example writes a file (or BEIR folder) from records drawn at random, damages some of them in ways whose effect
is known (a NaN score, a blank passage, a deep structure, a key given twice, a key first seen late, a byte order
mark, CRLF line ends), and ingests it into a copy of a store that already holds data. An oracle written here, apart
from the code under test, says which records are valid. Invariants:

* accepted => every record was valid, and every query, positive and negative of every record is in the store;
* refused  => an IngestError naming the file (and the first bad line, where lines exist); the store is unchanged;
* never any other exception.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from auditor.ingest import IngestError, ingest_path, limits
from auditor.store import open_store

from conftest import MSMARCO
from test_ingest import snapshot

#: The same examples on every run (a red CI means a change, not a lucky draw); set AUDITOR_HYPOTHESIS_EXPLORE=1 to
#: draw new ones, as when hunting for bugs (that is how a blank "\r" query text was found to fool the oracle).
DERANDOMIZE = not os.environ.get("AUDITOR_HYPOTHESIS_EXPLORE")
SETTINGS = settings(max_examples=50, deadline=None, derandomize=DERANDOMIZE,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BLANK = set(limits.BLANK_CHARS)


# ---------------------------------------------------------------------------------------------------------------
# The oracle: what a valid value is, written independently of auditor.ingest.rules


def is_text(v: object) -> bool:
    return isinstance(v, str) and any(c not in BLANK for c in v) and not is_deep(v)


def is_score(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and abs(v) <= limits.MAX_ABS_SCORE)


def is_id(v: object) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return limits.INT_ID_RANGE[0] <= v <= limits.INT_ID_RANGE[1]
    return is_text(v) and len(v) <= limits.MAX_ID_CHARS


def valid_pair_record(fmt: str, r: dict, layout: str = "") -> bool:
    q = r.get("query", r.get("anchor"))
    if not is_text(q):
        return False
    if fmt == "flag":
        pos, neg = r.get("pos"), r.get("neg")
        if not (isinstance(pos, list) and pos and all(map(is_text, pos))):
            return False
        if not (isinstance(neg, list) and all(map(is_text, neg))):
            return False
        for texts, key in ((pos, "pos_scores"), (neg, "neg_scores")):
            scores = r.get(key)
            if scores is not None and not (isinstance(scores, list) and all(map(is_score, scores))
                                           and len(scores) == len(texts)):
                return False
        return r.get("prompt") is None or isinstance(r["prompt"], str)
    if not is_text(r.get("positive")):
        return False
    if fmt == "triplets":
        return is_text(r.get("negative"))
    if layout == "list":
        return isinstance(r.get("neg"), list) and all(map(is_text, r["neg"]))
    return all(v is None or is_text(v) for k, v in r.items() if k.startswith("negative_"))


def expected_texts(fmt: str, r: dict) -> tuple[str, set[str], set[str]]:
    """(query, positives, negatives) a valid record must leave in the store."""
    q = r.get("query", r.get("anchor"))
    if fmt == "flag":
        return q, set(r["pos"]), set(r["neg"])
    if fmt == "triplets":
        return q, {r["positive"]}, {r["negative"]}
    negs = r["neg"] if "neg" in r else [v for k, v in r.items() if k.startswith("negative_") and v is not None]
    return q, {r["positive"]}, set(negs)


def stored_pairs(con) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    pos = set(con.execute("""SELECT q.text, d.text FROM qrels r JOIN queries q USING (query_id)
                             JOIN documents d USING (doc_id) WHERE r.relevant""").fetchall())
    neg = set(con.execute("""SELECT q.text, d.text FROM candidates c JOIN queries q USING (query_id)
                             JOIN documents d USING (doc_id)""").fetchall())
    return pos, neg


# ---------------------------------------------------------------------------------------------------------------
# Drawing records and damage


WORDS = ["alpha", "beta", "gamma", "delta", "é accent", "中文", "emoji 😀", "tab\tinside", "quote \" and ,comma",
         "line\nbreak", "nul \x00 char", "  padded  "]
texts = st.one_of(st.sampled_from(WORDS), st.text(min_size=1, max_size=6))
blanks = st.sampled_from(["", " ", "\t", "\r\n", "\u3000", "\u00a0", "\u200b", "\ufeff", " \u2003 "])
bad_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -2e6, 10**30])
wrong_types = st.sampled_from([17, 2.5, True, {"a": "b"}, ["x"], None])


def deep(n: int) -> str:
    """A placeholder for `n` nested lists, spliced into the JSON text when written (too deep for json.dumps)."""
    return f"<deep {n}>"


def dumps(record: dict) -> str:
    text = json.dumps(record)
    for n in (3, 200, 3000):
        marker = json.dumps(deep(n))
        text = text.replace(marker, "[" * n + "]" * n)
    return text


def is_deep(v: object) -> bool:
    return isinstance(v, str) and v.startswith("<deep ")


@dataclass
class Drawn:
    """A file's lines as records (or raw JSON text), with what the oracle knows about them."""

    records: list[object] = field(default_factory=list)  # dict, or str for a line written as is
    valid: list[bool] = field(default_factory=list)
    bom: bool = False
    crlf: bool = False
    refuse_file: bool = False  # a file-level problem (a text key the format does not read)


def base_record(draw, fmt: str, layout: str, key: str) -> dict:
    """A valid record; `key` is the file's query key (one per file: a file holding both would lose texts)."""
    q = draw(texts)
    if fmt == "flag":
        pos = draw(st.lists(texts, min_size=1, max_size=3))
        neg = draw(st.lists(texts, max_size=4))
        r = {"query": q, "pos": pos, "neg": neg}
        if draw(st.booleans()):
            r["pos_scores"] = [draw(st.floats(-1, 1)) for _ in pos]
            r["neg_scores"] = [draw(st.floats(-1, 1)) for _ in neg]
        return r
    if fmt == "triplets":
        return {key: q, "positive": draw(texts), "negative": draw(texts)}
    if layout == "list":
        return {key: q, "positive": draw(texts), "neg": draw(st.lists(texts, max_size=4))}
    return {key: q, "positive": draw(texts), **{f"negative_{i}": draw(texts) for i in range(1, 3)}}


def damage(draw, fmt: str, layout: str, r: dict) -> tuple[object, bool]:
    """A damaged copy of a record (a dict, or a raw JSON line) and whether it is still valid."""
    kind = draw(st.sampled_from(["blank", "type", "drop", "deep_field", "deep_other", "dup_read", "dup_other",
                                 "score", "score_len", "none"]))
    r = json.loads(json.dumps(r))  # a copy
    text_keys = [k for k in r if k not in ("pos_scores", "neg_scores")]
    key = draw(st.sampled_from(text_keys))
    if kind == "blank":
        if isinstance(r[key], list):
            if not r[key]:
                r[key] = [draw(blanks)]
            else:
                r[key][draw(st.integers(0, len(r[key]) - 1))] = draw(blanks)
        else:
            r[key] = draw(blanks)
    elif kind == "type":
        r[key] = draw(wrong_types)
    elif kind == "drop":
        del r[key]
    elif kind == "deep_field":
        r[key] = deep(draw(st.sampled_from([3, 200, 3000])))
    elif kind == "deep_other":
        r["meta"] = deep(draw(st.sampled_from([3, 200, 3000])))
    elif kind in ("dup_read", "dup_other"):
        dup_key = key if kind == "dup_read" else "meta"
        body = dumps(r)[1:-1]
        line = "{" + f'"{dup_key}": "first", ' + body + (', "meta": 1' if kind == "dup_other" else "") + "}"
        still = valid_pair_record(fmt, r, layout) and kind == "dup_other"
        return line, still
    elif kind in ("score", "score_len") and fmt == "flag" and r.get("neg"):
        scores = r.get("neg_scores") or [0.5] * len(r["neg"])
        if kind == "score":
            scores[draw(st.integers(0, len(scores) - 1))] = draw(bad_numbers)
        else:
            scores = scores + [0.1]
        r["neg_scores"] = scores
    return r, valid_pair_record(fmt, r, layout)


@st.composite
def pair_files(draw, fmt: str, layout: str = "", tabular: bool = False) -> Drawn:
    n = draw(st.integers(1, 8))
    out = Drawn(bom=draw(st.booleans()), crlf=draw(st.booleans()))
    qkey = "query" if fmt == "flag" else draw(st.sampled_from(["query", "anchor"]))
    for _ in range(n):
        r = base_record(draw, fmt, layout, qkey)
        if draw(st.integers(0, 3)) == 0 and not tabular:
            rec, ok = damage(draw, fmt, layout, r)
        elif draw(st.integers(0, 5)) == 0:
            key = draw(st.sampled_from([k for k in r if not k.endswith("_scores")]))
            if isinstance(r[key], list):
                r[key] = r[key] + [draw(blanks)] if key != "neg" or r[key] else [draw(blanks)]
            else:
                r[key] = draw(blanks)
            rec, ok = r, valid_pair_record(fmt, r, layout)
        else:
            rec, ok = r, valid_pair_record(fmt, r, layout)
        out.records.append(rec)
        out.valid.append(ok)
    if not tabular and fmt in ("ntuple", "triplets") and layout != "list" and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(0, n - 1))  # a numbered negative first seen on a late line
        if isinstance(out.records[i], dict):
            out.records[i][f"negative_{draw(st.integers(3, 9))}"] = draw(texts)
            out.valid[i] = valid_pair_record(fmt, out.records[i], layout)
            out.refuse_file = fmt == "triplets"
    return out


def write_jsonl(path: Path, drawn: Drawn) -> None:
    lines = [rec if isinstance(rec, str) else dumps(rec) for rec in drawn.records]
    end = "\r\n" if drawn.crlf else "\n"
    path.write_bytes((b"\xef\xbb\xbf" if drawn.bom else b"") + (end.join(lines) + end).encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Running one example


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A closed store holding the MS MARCO sample, copied for every example."""
    path = tmp_path_factory.mktemp("template") / "store.duckdb"
    con = open_store(path)
    ingest_path(con, MSMARCO)
    con.execute("CHECKPOINT")
    con.close()
    return path


def fresh_store(template: Path, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "store.duckdb"
    shutil.copyfile(template, path)
    return open_store(path)


def check_pair_outcome(con, path: Path, fmt: str, drawn: Drawn, first_bad_where: str | None, **kw) -> None:
    before = snapshot(con)
    try:
        summary = ingest_path(con, path, fmt=fmt, **kw)
    except IngestError as exc:
        event("refused")
        assert str(path) in str(exc)
        assert snapshot(con) == before, "a refused ingest changed the store"
        assert drawn.refuse_file or not all(drawn.valid), f"valid file refused: {exc}"
        if first_bad_where and not drawn.refuse_file:
            assert str(exc).startswith(first_bad_where + ":"), (str(exc), first_bad_where)
        return
    event("stored")
    assert not drawn.refuse_file and all(drawn.valid), f"invalid file accepted ({summary})"
    assert summary.records == len(drawn.records)
    pos, neg = stored_pairs(con)
    for rec in drawn.records:
        rec = json.loads(rec) if isinstance(rec, str) else rec
        q, ps, ns = expected_texts(fmt, rec)
        assert {(q, p) for p in ps} <= pos
        assert all((q, n) in neg or (q, n) in pos for n in ns)  # a negative that is also a positive stays a positive


def first_bad_line(drawn: Drawn) -> int | None:
    return next((i + 1 for i, ok in enumerate(drawn.valid) if not ok), None)


@pytest.mark.parametrize("fmt, layout", [("flag", ""), ("triplets", ""), ("ntuple", "numbered"), ("ntuple", "list")])
def test_jsonl_pair_formats(template, tmp_path_factory, fmt, layout):
    @SETTINGS
    @given(drawn=pair_files(fmt, layout))
    def run(drawn: Drawn) -> None:
        folder = tmp_path_factory.mktemp("ex")
        path = folder / "input.jsonl"
        write_jsonl(path, drawn)
        con = fresh_store(template, folder)
        try:
            bad = first_bad_line(drawn)
            check_pair_outcome(con, path, fmt, drawn, f"{path}:{bad}" if bad else None)
        finally:
            con.close()

    run()


@SETTINGS
@given(drawn=pair_files("flag"))
def test_skip_bad_stores_exactly_the_valid_records(template, tmp_path_factory, drawn):
    folder = tmp_path_factory.mktemp("ex")
    path = folder / "input.jsonl"
    write_jsonl(path, drawn)
    con = fresh_store(template, folder)
    try:
        before = snapshot(con)
        try:
            summary = ingest_path(con, path, fmt="flag", skip_bad=True, rejects_path=folder / "rejects.jsonl")
        except IngestError as exc:
            event("refused")  # "no valid records", or no record has a key the format needs
            assert not any(drawn.valid) and str(exc).startswith(str(path)), str(exc)
            assert snapshot(con) == before
            return
        event(f"stored, {'some' if summary.skipped else 'none'} skipped")
        assert summary.skipped == drawn.valid.count(False)
        assert summary.records == drawn.valid.count(True)
        rejected = [json.loads(x)["line"] for x in (folder / "rejects.jsonl").read_text().splitlines()] if summary.skipped else []
        assert rejected == [i + 1 for i, ok in enumerate(drawn.valid) if not ok]
        pos, neg = stored_pairs(con)
        for rec, ok in zip(drawn.records, drawn.valid):
            if ok:
                rec = json.loads(rec) if isinstance(rec, str) else rec
                q, ps, ns = expected_texts("flag", rec)
                assert {(q, p) for p in ps} <= pos and all((q, n) in neg or (q, n) in pos for n in ns)
    finally:
        con.close()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tabular_triplets(template, tmp_path_factory, suffix):
    @SETTINGS
    @given(drawn=pair_files("triplets", tabular=True), nulls=st.booleans())
    def run(drawn: Drawn, nulls: bool) -> None:
        folder = tmp_path_factory.mktemp("ex")
        path = folder / f"input{suffix}"
        rows = [dict(r) for r in drawn.records]
        if nulls:  # a missing cell
            rows[0]["negative"] = None
            drawn.valid[0] = False
        names = ["query" if "query" in rows[0] else "anchor", "positive", "negative"]
        q_key = names[0]
        for r in rows:  # one query column per file
            r[q_key] = r.pop("query", r.pop("anchor", None))
        if suffix == ".csv":
            with open(path, "w", newline="", encoding="utf-8-sig" if drawn.bom else "utf-8") as fh:
                # CRLF line ends, or quotes around every cell: a bare "\r" in a cell must not end the row
                w = csv.writer(fh, lineterminator="\r\n" if drawn.crlf else "\n",
                               quoting=csv.QUOTE_MINIMAL if drawn.crlf else csv.QUOTE_ALL)
                w.writerow(names)
                w.writerows([[r[k] for k in names] for r in rows])
            # an empty cell reads as missing, like a null
            drawn.valid = [ok and all(r[k] not in ("", None) for k in names) for ok, r in zip(drawn.valid, rows)]
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in names}), path)
        drawn.records = rows
        con = fresh_store(template, folder)
        try:
            check_pair_outcome(con, path, "triplets", drawn, None)
        finally:
            con.close()

    run()


# ---------------------------------------------------------------------------------------------------------------
# BEIR folders


@st.composite
def beir_folders(draw) -> dict:
    """A small BEIR folder as data: corpus and query records, qrels rows, and which of them are valid."""
    n_docs, n_queries = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    docs = [{"_id": f"d{i}", "title": draw(st.sampled_from(["", "T"])), "text": draw(texts)} for i in range(n_docs)]
    queries = [{"_id": f"q{i}", "text": draw(texts)} for i in range(n_queries)]
    qrels = [[q["_id"], draw(st.sampled_from(docs))["_id"], str(draw(st.integers(0, 3)))] for q in queries]
    # a drawn text may itself be blank (st.text gives "\r"): a blank query is invalid, a blank passage is not
    ok = {"corpus": [True] * n_docs, "queries": [is_text(q["text"]) for q in queries], "qrels": [True] * n_queries}
    raw: dict[str, dict[int, str]] = {"corpus": {}, "queries": {}}
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from(["corpus", "queries", "qrels"]))
        if target == "qrels":
            i = draw(st.integers(0, n_queries - 1))
            how = draw(st.sampled_from(["grade", "unknown", "blank"]))
            if how == "grade":
                qrels[i][2] = draw(st.sampled_from(["99999999999", "-3000000000", "1.5", "high"]))
            elif how == "unknown":
                qrels[i][1] = "no-such-doc"
            else:
                qrels[i][0] = "  "
            ok["qrels"][i] = False
            continue
        records = docs if target == "corpus" else queries
        i = draw(st.integers(0, len(records) - 1))
        how = draw(st.sampled_from(["blank", "id_huge", "id_float", "id_long", "deep_other", "dup_id_key", "type"]))
        r = records[i]
        if how == "blank":
            r["text"] = draw(blanks)
            ok[target][i] = ok[target][i] and target == "corpus"  # a corpus passage may be empty (real corpora have some)
        elif how == "id_huge":
            r["_id"] = 2**70
            ok[target][i] = False
        elif how == "id_float":
            r["_id"] = 1.5
            ok[target][i] = False
        elif how == "id_long":
            r["_id"] = "x" * (limits.MAX_ID_CHARS + 1)
            ok[target][i] = False
        elif how == "deep_other":
            r["meta"] = deep(draw(st.sampled_from([5, 3000])))
        elif how == "dup_id_key":
            raw[target][i] = '{"_id": "other", ' + dumps(r)[1:]
            ok[target][i] = False
        else:
            r["text"] = draw(wrong_types)
            ok[target][i] = False
    return {"docs": docs, "queries": queries, "qrels": qrels, "ok": ok, "raw": raw,
            "bom": draw(st.booleans()), "crlf": draw(st.booleans())}


def write_beir(folder: Path, b: dict) -> None:
    end = "\r\n" if b["crlf"] else "\n"
    bom = b"\xef\xbb\xbf" if b["bom"] else b""
    (folder / "qrels").mkdir(parents=True)
    for name, records in (("corpus", b["docs"]), ("queries", b["queries"])):
        lines = [b["raw"][name].get(i, dumps(r)) for i, r in enumerate(records)]
        (folder / f"{name}.jsonl").write_bytes(bom + end.join(lines).encode() + end.encode())
    rows = ["query-id\tcorpus-id\tscore"] + ["\t".join(r) for r in b["qrels"]]
    (folder / "qrels" / "test.tsv").write_bytes(bom + end.join(rows).encode() + end.encode())


@SETTINGS
@given(b=beir_folders())
def test_beir_folders(template, tmp_path_factory, b):
    folder = tmp_path_factory.mktemp("ex")
    beir = folder / "beir"
    write_beir(beir, b)
    # a judgment of a refused document or query is refused with it
    valid_ids = {r["_id"] for r, ok in zip(b["docs"] + b["queries"], b["ok"]["corpus"] + b["ok"]["queries"]) if ok}
    all_valid = all(all(v) for v in b["ok"].values()) and all(q in valid_ids and d in valid_ids for q, d, _ in b["qrels"])
    con = fresh_store(template, folder)
    try:
        before = snapshot(con)
        try:
            summary = ingest_path(con, beir)
        except IngestError as exc:
            event("refused")
            assert str(beir) in str(exc)
            assert snapshot(con) == before
            assert not all_valid, f"valid folder refused: {exc}"
            return
        event("stored")
        assert all_valid, f"invalid folder accepted: {summary}"
        stored_docs = dict(con.execute("SELECT doc_id, text FROM documents WHERE dataset = 'beir'").fetchall())
        assert stored_docs == {d["_id"]: d["text"] for d in b["docs"]}
        judged = set(con.execute("SELECT query_id, doc_id, grade FROM qrels WHERE dataset = 'beir'").fetchall())
        expected: dict[tuple[str, str], int] = {}
        for q, d, g in b["qrels"]:
            expected[(q, d)] = max(expected.get((q, d), -1), int(g))
        assert judged == {(q, d, g) for (q, d), g in expected.items()}
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------------------
# The rule table itself: a definite verdict on any JSON value, matching the oracle


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4) | blanks | st.sampled_from(["x" * limits.MAX_ID_CHARS, "y" * (limits.MAX_ID_CHARS + 1)]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
    max_leaves=5,
)


def is_label(value: object) -> bool:
    """A relevance label: 0 or 1, true or false, or those as strings (CSV cells)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in (0, 1)
    return isinstance(value, str) and value in ("0", "1", "true", "false")


def oracle(kind: str, value: object) -> bool:
    from auditor.ingest import rules

    is_list = isinstance(value, list)
    return {
        rules.TEXT: lambda: is_text(value),
        rules.STRING: lambda: isinstance(value, str),
        rules.ID: lambda: is_id(value),
        rules.TEXT_LIST: lambda: is_list and bool(value) and all(map(is_text, value)),
        rules.TEXT_LIST_OR_EMPTY: lambda: is_list and all(map(is_text, value)),
        rules.NUMBER_LIST: lambda: is_list and all(map(is_score, value)),
        rules.LABEL: lambda: is_label(value),
        rules.LABEL_LIST: lambda: is_list and bool(value) and all(map(is_label, value)),
    }[kind]()


_ABSENT = object()  # the key is not in the record at all (SQL NULL, not JSON null)
_DUCK: list = []


@settings(max_examples=50, deadline=None, derandomize=DERANDOMIZE)
@given(values=st.lists(json_values | st.just(_ABSENT), min_size=1, max_size=25))
def test_rule_table_gives_a_definite_verdict_matching_the_oracle(values):
    import duckdb

    from auditor.ingest import rules
    from auditor.sql import ident

    if not _DUCK:
        _DUCK.append(duckdb.connect())
    fields = [rules.Field(f"{kind}-{required}", kind, required) for kind in rules.RULES for required in (True, False)]
    rows = ", ".join("(NULL::JSON)" if v is _ABSENT else "(json(?))" for v in values)
    params = [json.dumps(v) for v in values if v is not _ABSENT]
    columns = ", ".join(f"j AS {ident(f.name)}" for f in fields)
    checks = ", ".join(rules.problem_sql([f]) for f in fields)
    got = _DUCK[0].execute(
        f"SELECT {checks} FROM (SELECT {columns} FROM (VALUES {rows}) t(j))", params
    ).fetchall()
    for value, row in zip(values, got):
        for f, problem in zip(fields, row):
            missing = value is _ABSENT or value is None
            valid = (not f.required) if missing else oracle(f.kind, value)
            assert (problem is None) == valid, (f, value, problem)
            if problem is not None:
                field, message = rules.split_problem(problem)
                assert field == f.name and message  # a message, never an empty or NULL one


def test_blank_characters_include_all_python_whitespace():
    assert all(chr(c) in BLANK for c in range(0x110000) if chr(c).isspace())
