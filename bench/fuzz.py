"""Fuzzing ingest: corrupted variants of the shipped samples, each ingested into a copy of a non-empty store.

    python bench/fuzz.py                      # 200 variants of each input, seed 0, 2 worker processes
    python bench/fuzz.py --variants 50 --show 5

Inputs: data/msmarco-mined/train.jsonl (FlagEmbedding), data/cranfield as a BEIR folder (one of corpus.jsonl,
queries.jsonl, qrels/test.tsv corrupted per variant), and the MS MARCO sample converted to sentence-transformers
triplets as CSV and as Parquet. Each variant gets 1-3 seeded mutations, at byte level (delete, insert or flip bytes,
truncate, duplicate a line, BOM, CRLF) or at JSON / row level (change a type, NaN or Infinity, huge numbers, deep
nesting, empty and whitespace-only strings, lone surrogates, dropped keys, keys first seen on a late line, duplicate
keys, unknown ids, out-of-range grades, null cells, duplicate columns).

Every outcome is classified:
  stored-valid       accepted, and a re-validation of the variant written here (not auditor's rules) finds every
                     record valid and every text stored, nothing else added
  refused            an IngestError / StoreError naming the input file, the store unchanged
  traceback          any other exception                                              (target 0)
  invalid-accepted   accepted although the re-validation finds a bad record, or texts missing or extra  (target 0)
  store-changed      refused, but the store's tables differ from before                (target 0)
  refused-valid      refused although the re-validation finds nothing wrong (reported, not a target)
  bench-error        this script failed to make or re-validate a variant                    (target 0)
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MSMARCO = ROOT / "data" / "msmarco-mined" / "train.jsonl"
CRANFIELD = ROOT / "data" / "cranfield"
INPUTS = ["msmarco.jsonl", "cranfield-beir", "triplets.csv", "triplets.parquet"]
TARGETS = ("traceback", "invalid-accepted", "store-changed", "bench-error")
OUTCOMES = ("stored-valid", "refused", "refused-valid") + TARGETS

# ---------------------------------------------------------------------------------------------------------------
# What is valid, written apart from auditor.ingest.rules (the limits are shared: they are the specification)


def _limits():
    from auditor.ingest import limits

    return limits


def is_text(v: object, blank_ok: bool = False) -> bool:
    if not isinstance(v, str) or re.search("[\ud800-\udfff]", v):
        return False
    return blank_ok or any(c not in _limits().BLANK_CHARS for c in v)


def is_score(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and abs(v) <= _limits().MAX_ABS_SCORE)


def is_id(v: object) -> bool:
    lo, hi = _limits().INT_ID_RANGE
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return lo <= v <= hi
    return is_text(v) and len(v) <= _limits().MAX_ID_CHARS


class Invalid(Exception):
    """The variant as a whole must be refused."""


_TOO_DEEP = object()  # a value nested deeper than Python's parser goes: never a valid field
_TEXT_KEYS = {"query", "anchor", "pos", "neg", "positive", "negative"}


def _loads_lenient(text: str, keys: set[str]) -> dict:
    """A JSON object line, parsed as DuckDB's reader parses it (trailing commas, nan, very deep values accepted);
    raises Invalid for anything that is not one JSON object of valid UTF-8 without lone surrogates, or that gives a
    key ingest reads twice."""
    def pairs_hook(pairs):
        names = [k for k, _ in pairs]
        dup = {k for k in names if names.count(k) > 1}
        return {"__dups__": dup, **dict(pairs)} if dup else dict(pairs)

    try:
        value = json.loads(text, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        value = _duckdb_object(text, keys)
    if not isinstance(value, dict):
        raise Invalid("not an object")
    if value.pop("__dups__", set()) & keys:
        raise Invalid("duplicate key")
    if re.search(r"\\u[dD][89a-fA-F]", text) and _has_lone_surrogate(value):
        raise Invalid("lone surrogate")
    return value


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and re.search("[\ud800-\udfff]", v):
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _duckdb_object(text: str, keys: set[str]) -> dict:
    import duckdb

    con = duckdb.connect()
    try:
        kind, names = con.execute("SELECT json_type(j), json_keys(j) FROM (SELECT json(?) AS j)", [text]).fetchone()
    except (duckdb.Error, UnicodeDecodeError):
        raise Invalid("malformed JSON") from None
    if kind != "OBJECT":
        raise Invalid("not an object")
    out: dict = {}
    for k in names:
        if k in keys and k in out:
            raise Invalid("duplicate key")
        raw = con.execute("SELECT json_extract(json(?), ?)", [text, "$." + json.dumps(k)]).fetchone()[0]
        raw = re.sub(r'("(?:[^"\\]|\\.)*")|(-?)\b(nan|inf)\b', lambda m: m.group(1) or
                     (m.group(2) + {"nan": "NaN", "inf": "Infinity"}[m.group(3)]), raw)
        try:
            out[k] = json.loads(raw)
        except RecursionError:
            out[k] = _TOO_DEEP
        except ValueError:  # an integer of thousands of digits
            out[k] = float("inf") if not raw.lstrip().startswith("-") else float("-inf")
    return out


def _lines(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.strip(b" \t\r\n\x0b\x0c"):
            out.append((number, raw))
    return out


def _records(data: bytes, keys: set[str]) -> list[dict]:
    records = []
    for _number, raw in _lines(data):
        if len(raw) > _limits().MAX_RECORD_BYTES:
            raise Invalid("record too large")
        try:
            text = raw.strip(b" \t\r\n\x0b\x0c").decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("bad UTF-8") from None
        records.append(_loads_lenient(text, keys))
    if not records:
        raise Invalid("no records")
    return records


FLAG_KEYS = {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt"}


def expect_flag(data: bytes) -> list[tuple[str, set[str], set[str]]]:
    """(query, positives, negatives) of every record of a valid FlagEmbedding file; raises Invalid otherwise."""
    records = _records(data, FLAG_KEYS)
    union = set().union(*records)
    if not {"query", "pos", "neg"} <= union:
        raise Invalid("layout")
    if any(k in _TEXT_KEYS or re.fullmatch(r"negative_\d+", k) for k in union - FLAG_KEYS):
        raise Invalid("unread text key")
    out = []
    for r in records:
        q, pos, neg = r.get("query"), r.get("pos"), r.get("neg")
        if not (is_text(q) and isinstance(pos, list) and pos and all(map(is_text, pos))
                and isinstance(neg, list) and all(map(is_text, neg))):
            raise Invalid("field")
        for texts, key in ((pos, "pos_scores"), (neg, "neg_scores")):
            s = r.get(key)
            if s is not None and not (isinstance(s, list) and len(s) == len(texts) and all(map(is_score, s))):
                raise Invalid("scores")
        if r.get("prompt") is not None and not is_text(r["prompt"], blank_ok=True):
            raise Invalid("prompt")
        out.append((q, set(pos), set(neg)))
    return out


def _triplets(rows: list[dict], columns: list[str]) -> list[tuple[str, set[str], set[str]]]:
    if len(set(columns)) != len(columns):
        raise Invalid("duplicate column")
    q_key = "query" if "query" in columns else "anchor" if "anchor" in columns else None
    if q_key is None or not {"positive", "negative"} <= set(columns):
        raise Invalid("layout")
    read = {q_key, "positive", "negative"}
    if any(k in _TEXT_KEYS or re.fullmatch(r"negative_\d+", k) for k in set(columns) - read):
        raise Invalid("unread text key")
    if not rows:
        raise Invalid("no records")
    out = []
    for r in rows:
        if not all(is_text(r.get(k)) for k in read):
            raise Invalid("field")
        out.append((r[q_key], {r["positive"]}, {r["negative"]}))
    return out


def expect_csv(data: bytes) -> list[tuple[str, set[str], set[str]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid("bad UTF-8") from None
    try:
        parsed = [row for row in csv.reader(io.StringIO(text, newline=""), strict=True) if row]
    except csv.Error:
        raise Invalid("csv") from None
    if not parsed:
        raise Invalid("empty")
    columns = [c or f"column{i}" for i, c in enumerate(parsed[0])]
    rows = []
    for cells in parsed[1:]:
        if len(cells) != len(columns):
            raise Invalid("cell count")
        rows.append({k: (v if v != "" else None) for k, v in zip(columns, cells)})
    return _triplets(rows, columns)


def expect_parquet(path: Path) -> list[tuple[str, set[str], set[str]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        columns = table.column_names
        rows = table.to_pylist() if len(set(columns)) == len(columns) else []
    except Exception:  # pyarrow's many errors for a damaged file
        raise Invalid("parquet") from None
    return _triplets(rows, columns)


def expect_beir(folder: Path) -> dict:
    """Documents {id: text}, judged queries {id: text} and qrels {(q, d): grade} of a valid BEIR folder."""
    docs, queries = {}, {}
    for name, target, fields in (("corpus", docs, {"_id", "text", "title"}), ("queries", queries, {"_id", "text"})):
        for r in _records((folder / f"{name}.jsonl").read_bytes(), fields):
            _id, text = r.get("_id"), r.get("text")
            if not is_id(_id) or not is_text(text, blank_ok=name == "corpus"):
                raise Invalid(f"{name} field")
            if name == "corpus" and r.get("title") is not None and not is_text(r["title"], blank_ok=True):
                raise Invalid("title")
            key = str(_id)
            full = (r.get("title") or "", text)
            if key in target and target[key][1] != full:
                raise Invalid("duplicate id")
            target[key] = (text, full)
    qrels: dict[tuple[str, str], int] = {}
    lo, hi = _limits().GRADE_RANGE
    data = (folder / "qrels" / "test.tsv").read_bytes()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("qrels UTF-8") from None
        try:
            parts = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))
        except csv.Error:
            raise Invalid("qrels line") from None
        if number == 1 and parts and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(parts) == 4:
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise Invalid("qrels columns")
        q, d, g = (p.strip() for p in parts)
        if not (is_id(q) and is_id(d)) or q not in queries or d not in docs:
            raise Invalid("qrels id")
        try:
            grade = int(g)
        except ValueError:
            raise Invalid("qrels grade") from None
        if not lo <= grade <= hi:
            raise Invalid("qrels grade range")
        qrels[(q, d)] = max(grade, qrels.get((q, d), grade))
    if not qrels:
        raise Invalid("no judgments")
    judged = {q for q, _ in qrels}
    return {"docs": {k: v[0] for k, v in docs.items()}, "queries": {k: queries[k][0] for k in judged}, "qrels": qrels}


# ---------------------------------------------------------------------------------------------------------------
# Mutations


JUNK = [b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"\n", b"\r",
        b"\t", b" ", b"\xef\xbb\xbf", b"\\u", b"e9", b"-"]


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    op = rng.choice(["delete", "insert", "flip", "truncate", "duplicate_line", "bom", "crlf", "swap_lines"])
    n = len(data)
    if op == "delete" and n:
        i = rng.randrange(n)
        return data[:i] + data[i + rng.randint(1, 8):]
    if op == "insert":
        i = rng.randrange(n + 1)
        return data[:i] + b"".join(rng.choice(JUNK) for _ in range(rng.randint(1, 3))) + data[i:]
    if op == "flip" and n:
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == "truncate" and n:
        return data[: rng.randrange(n)]
    lines = data.split(b"\n")
    if op == "duplicate_line":
        i = rng.randrange(len(lines))
        return b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if op == "swap_lines" and len(lines) > 2:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def json_mutation(data: bytes, rng: random.Random, late_keys: list[str]) -> bytes:
    """Change one JSON line: a type, a number, a nesting, a string, a key."""
    lines = data.split(b"\n")
    candidates = [i for i, line in enumerate(lines) if line.strip()]
    if not candidates:
        return data
    i = rng.choice(candidates)
    try:
        record = json.loads(lines[i])
    except (ValueError, RecursionError):
        return data
    if not isinstance(record, dict) or not record:
        return data
    op = rng.choice(["type", "nan", "huge", "deep", "deep_other", "empty", "whitespace", "surrogate", "drop",
                     "late_key", "dup_key", "empty_list"])
    key = rng.choice(sorted(record))
    raw = None
    if op == "type":
        record[key] = rng.choice([17, 2.5, True, None, {"a": 1}, ["x"], "text"])
    elif op in ("nan", "huge"):
        lists = [k for k, v in record.items() if isinstance(v, list) and v and isinstance(v[0], (int, float))]
        target = rng.choice(lists) if lists else key
        value = rng.choice([math.nan, math.inf, -math.inf]) if op == "nan" else rng.choice([1e308, 10**30, 2**70, -3e6])
        if isinstance(record.get(target), list) and record[target]:
            record[target][rng.randrange(len(record[target]))] = value
        else:
            record[target] = value
    elif op == "deep":
        raw = json.dumps({**record, key: "<DEEP>"}).replace('"<DEEP>"', _deep(rng.choice([50, 2000, 5000])))
    elif op == "deep_other":
        raw = json.dumps({**record, "meta": "<DEEP>"}).replace('"<DEEP>"', _deep(rng.choice([50, 2000, 5000])))
    elif op in ("empty", "whitespace"):
        value = "" if op == "empty" else rng.choice([" ", "\t", "\u3000 ", "\u200b", "\r\n"])
        if isinstance(record[key], list) and record[key]:
            record[key][rng.randrange(len(record[key]))] = value
        else:
            record[key] = value
    elif op == "surrogate":
        strings = [k for k, v in record.items() if isinstance(v, str)]
        if strings:
            k = rng.choice(strings)
            raw = json.dumps({**record, k: "<S>" + record[k]}).replace("<S>", rng.choice(["\\ud800", "\\udfff"]))
    elif op == "drop":
        del record[key]
    elif op == "late_key":
        record[rng.choice(late_keys)] = rng.choice(["a late text", ["a", "b"], 3])
    elif op == "dup_key":
        raw = "{" + json.dumps(key) + ': "first", ' + json.dumps(record)[1:]
    elif op == "empty_list":
        record[key] = []
    lines[i] = (raw if raw is not None else json.dumps(record)).encode()
    return b"\n".join(lines)


def qrels_mutation(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i = rng.randrange(1, max(2, len(lines) - 1))
    parts = lines[i].split(b"\t")
    if len(parts) != 3:
        return data
    op = rng.choice(["grade_huge", "grade_float", "grade_text", "blank_id", "unknown_id", "trec", "drop_column"])
    if op == "grade_huge":
        parts[2] = rng.choice([b"99999999999", b"-2147483649"])
    elif op == "grade_float":
        parts[2] = b"1.5"
    elif op == "grade_text":
        parts[2] = b"high"
    elif op == "blank_id":
        parts[rng.randrange(2)] = b" "
    elif op == "unknown_id":
        parts[1] = b"no-such-document"
    elif op == "trec":
        parts = [parts[0], b"0", parts[1], parts[2]]
    else:
        parts = parts[:2]
    lines[i] = b"\t".join(parts)
    return b"\n".join(lines)


def table_mutation(rows: list[dict], rng: random.Random) -> tuple[list[dict], list[str]]:
    """A row- or column-level change of a triplets table: null or blank cells, a dropped, duplicated or extra column."""
    columns = list(rows[0])
    op = rng.choice(["null", "blank", "drop_column", "extra_column", "late_negative", "rename", "newline"])
    rows = [dict(r) for r in rows]
    r = rng.choice(rows)
    k = rng.choice(columns)
    if op == "null":
        r[k] = None
    elif op == "blank":
        r[k] = rng.choice(["", " ", "\t", "\u3000"])
    elif op == "newline":
        r[k] = (r.get(k) or "") + "\nsecond line, with a \"quote\""
    elif op == "drop_column":
        columns.remove(k)
    elif op == "extra_column":
        columns.append("source")
        for row in rows:
            row["source"] = "x"
    elif op == "late_negative":
        columns.append("negative_2")
        for row in rows:
            row["negative_2"] = None
        r["negative_2"] = "a late negative"
    else:
        columns[columns.index(k)] = rng.choice(["query", "anchor", "Positive", "neg"])
        rows = [{(columns[i]): row[c] for i, c in enumerate(list(rows[0]))} for row in rows]
    return rows, columns


# ---------------------------------------------------------------------------------------------------------------
# One variant


def triplet_rows() -> list[dict]:
    out = []
    for line in MSMARCO.read_text().splitlines():
        r = json.loads(line)
        out += [{"anchor": r["query"], "positive": r["pos"][0], "negative": n} for n in r["neg"]]
    return out


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])


def write_parquet(path: Path, rows: list[dict], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([pa.array([r.get(c) for r in rows], pa.string()) for c in columns], names=columns), path)


def make_variant(name: str, seed: int, folder: Path) -> Path:
    rng = random.Random(f"{name}:{seed}")
    n_mutations = rng.randint(1, 3)
    if name == "msmarco.jsonl":
        data = MSMARCO.read_bytes()
        for _ in range(n_mutations):
            if rng.random() < 0.5:
                data = byte_mutation(data, rng)
            else:
                data = json_mutation(data, rng, ["anchor", "positive", "negative_3", "pos_scores", "source"])
        path = folder / "train.jsonl"
        path.write_bytes(data)
        return path
    if name == "cranfield-beir":
        path = folder / "cranfield"
        shutil.copytree(CRANFIELD, path)
        for f in path.rglob("*"):
            f.chmod(0o644 if f.is_file() else 0o755)
        for _ in range(n_mutations):
            target = rng.choice(["corpus.jsonl", "corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
            data = (path / target).read_bytes()
            if target.endswith(".tsv"):
                data = byte_mutation(data, rng) if rng.random() < 0.5 else qrels_mutation(data, rng)
            elif rng.random() < 0.5:
                data = byte_mutation(data, rng)
            else:
                data = json_mutation(data, rng, ["title", "metadata", "text"])
            (path / target).write_bytes(data)
        return path
    rows, columns = triplet_rows(), ["anchor", "positive", "negative"]
    path = folder / ("triplets.csv" if name.endswith(".csv") else "triplets.parquet")
    byte_level = rng.random() < 0.4
    if not byte_level:
        for _ in range(n_mutations):
            rows, columns = table_mutation(rows, rng)
    (write_csv if name.endswith(".csv") else write_parquet)(path, rows, columns)
    if byte_level:
        data = path.read_bytes()
        for _ in range(n_mutations):
            data = byte_mutation(data, rng)
        path.write_bytes(data)
    return path


def expectation(name: str, path: Path):
    """What a correct ingest stores from this variant, or Invalid(reason)."""
    try:
        if name == "msmarco.jsonl":
            return expect_flag(path.read_bytes())
        if name == "cranfield-beir":
            return expect_beir(path)
        if name.endswith(".csv"):
            return expect_csv(path.read_bytes())
        return expect_parquet(path)
    except Invalid as exc:
        return exc


def contents(con) -> dict[str, list]:
    """Every row of the tables ingest writes (timestamps aside): equal contents mean nothing was written."""
    tables = {"queries": "*", "documents": "*", "qrels": "*", "candidates": "* EXCLUDE (added_at)",
              "ingests": "* EXCLUDE (ingested_at)"}
    return {t: sorted(map(repr, con.execute(f"SELECT {cols} FROM {t}").fetchall())) for t, cols in tables.items()}


def _texts(con, table: str) -> set[str]:
    return {r[0] for r in con.execute(f"SELECT text FROM {table}").fetchall()}


def check_stored(name: str, con, before: dict, expected) -> str | None:
    """None when the store holds exactly what the variant should add; else what is wrong."""
    if name == "cranfield-beir":
        docs = dict(con.execute("SELECT doc_id, text FROM documents WHERE dataset = 'cranfield'").fetchall())
        queries = dict(con.execute("SELECT query_id, text FROM queries WHERE dataset = 'cranfield'").fetchall())
        qrels = {(q, d): g for q, d, g in con.execute(
            "SELECT query_id, doc_id, grade FROM qrels WHERE dataset = 'cranfield'").fetchall()}
        for what, got, want in (("documents", docs, expected["docs"]), ("queries", queries, expected["queries"]),
                                ("qrels", qrels, expected["qrels"])):
            if got != want:
                diff = set(got.items()) ^ set(want.items())
                return f"{what} differ: {sorted(diff, key=repr)[:2]!r}"
        return None
    pos = set(con.execute("""SELECT q.text, d.text FROM qrels r JOIN queries q USING (query_id)
                             JOIN documents d USING (doc_id) WHERE r.relevant""").fetchall())
    neg = set(con.execute("""SELECT q.text, d.text FROM candidates c JOIN queries q USING (query_id)
                             JOIN documents d USING (doc_id)""").fetchall())
    texts = {t for q, ps, ns in expected for t in ps | ns}
    queries = {q for q, _, _ in expected}
    for q, ps, ns in expected:
        for p in ps:
            if (q, p) not in pos:
                return f"positive missing: {p[:60]!r}"
        for n in ns:
            if (q, n) not in neg and (q, n) not in pos:
                return f"negative missing: {n[:60]!r}"
    new_docs = _texts(con, "documents") - before["document texts"]
    new_queries = _texts(con, "queries") - before["query texts"]
    if new_docs - texts:
        return f"unexpected document stored: {sorted(new_docs - texts)[0][:60]!r}"
    if new_queries - queries:
        return f"unexpected query stored: {sorted(new_queries - queries)[0][:60]!r}"
    return None


def run_variant(args: tuple[str, int, str, str]) -> tuple[str, int, str, str]:
    """Ingest one variant into a copy of the template store; (input, seed, outcome, detail)."""
    name, seed, template, work = args
    from auditor.ingest import ingest_path
    from auditor.store import StoreError, open_store

    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        try:
            path = make_variant(name, seed, folder)
            expected = expectation(name, path)
        except Exception as exc:  # noqa: BLE001 - a bug of this script, reported as such
            return name, seed, "bench-error", "".join(traceback.format_exception_only(exc)).strip()[:300]
        db = folder / "store.duckdb"
        shutil.copyfile(template, db)
        con = open_store(db)
        try:
            before = contents(con)
            texts_before = {"document texts": _texts(con, "documents"), "query texts": _texts(con, "queries")}
            fmt = {"msmarco.jsonl": "flag", "cranfield-beir": "beir"}.get(name, "triplets")
            try:
                ingest_path(con, path, fmt=fmt, rejects_path=folder / "rejects.jsonl")
            except StoreError as exc:  # IngestError included
                if contents(con) != before:
                    return name, seed, "store-changed", str(exc)[:200]
                if str(path) not in str(exc):
                    return name, seed, "traceback", f"message does not name the input: {str(exc)[:200]}"
                return name, seed, "refused" if isinstance(expected, Invalid) else "refused-valid", str(exc)[:200]
            except Exception as exc:  # noqa: BLE001 - the point is to catch everything
                return name, seed, "traceback", "".join(traceback.format_exception_only(exc)).strip()[:300]
            if isinstance(expected, Invalid):
                return name, seed, "invalid-accepted", f"re-validation: {expected}"
            problem = check_stored(name, con, texts_before, expected)
            return name, seed, "invalid-accepted" if problem else "stored-valid", problem or ""
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_template(work: Path) -> Path:
    """A small non-empty store (the MS MARCO sample), closed and checkpointed, copied for every variant."""
    from auditor.ingest import ingest_path
    from auditor.store import open_store

    path = work / "template.duckdb"
    con = open_store(path)
    ingest_path(con, MSMARCO, name="base")
    con.execute("CHECKPOINT")
    con.close()
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=200, help="variants per input (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (variants use seed .. seed+variants-1)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--inputs", default=",".join(INPUTS), help="comma-separated subset of: " + ", ".join(INPUTS))
    ap.add_argument("--show", type=int, default=3, help="examples printed per failing outcome")
    args = ap.parse_args()
    names = args.inputs.split(",")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="auditor-fuzz-") as work:
        template = build_template(Path(work))
        jobs = [(n, s, str(template), work) for n in names for s in range(args.seed, args.seed + args.variants)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.workers) as pool:
            results = pool.map(run_variant, jobs, chunksize=4)
    counts = {n: Counter() for n in names}
    for name, _seed, outcome, _detail in results:
        counts[name][outcome] += 1
    width = max(map(len, names)) + 2
    print(f"{'input':<{width}}" + "".join(f"{o:>18}" for o in OUTCOMES))
    for n in names:
        print(f"{n:<{width}}" + "".join(f"{counts[n][o]:>18,}" for o in OUTCOMES))
    total = sum(counts.values(), Counter())
    print(f"{'total':<{width}}" + "".join(f"{total[o]:>18,}" for o in OUTCOMES))
    print(f"{len(results):,} variants in {time.perf_counter() - t0:.0f} s ({args.workers} workers, seeds "
          f"{args.seed}..{args.seed + args.variants - 1})")
    shown = Counter()
    for name, seed, outcome, detail in results:
        if outcome in TARGETS + ("refused-valid",) and shown[outcome] < args.show:
            shown[outcome] += 1
            print(f"  {outcome}: {name} seed {seed}: {detail}")
    missed = [o for o in TARGETS if total[o]]
    if missed:
        print("targets missed: " + ", ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
