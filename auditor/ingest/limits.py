"""What ingest accepts, stated once. Every limit here is enforced with a message naming file, line and field.

A limit is a promise to the user: a file inside these limits ingests, a file outside them is refused before anything
is stored, with the line that broke it. Tests read these constants rather than copying them.
"""

from __future__ import annotations

#: Largest record, in bytes: the fields ingest reads from one line (or row), together, as JSON; a larger one is refused
#: naming its line. A line made much larger by keys ingest does not read is refused too, when DuckDB's reader cannot
#: take it. 16 MiB is DuckDB's own default for its JSON reader: its read buffers grow with this setting, and at 64 MiB
#: a file with a handful of such records ran out of memory under the default 2GB ceiling (AUDITOR_MEMORY_LIMIT), while
#: ten records of 15.5 MiB each ingest within it.
MAX_RECORD_BYTES = 16 * 1024 * 1024

#: Longest id (BEIR ``_id``, qrels query-id / corpus-id), in characters. Ids are keys, joined and indexed everywhere;
#: a longer "id" is almost always a text pasted into the wrong column.
MAX_ID_CHARS = 1024

#: Integer ids must fit in 64 bits (signed, or unsigned when positive), as DuckDB reads JSON integers; a larger
#: number is read as a float and loses digits, so it is refused rather than stored under a different id.
INT_ID_RANGE = (-(2**63), 2**64 - 1)

#: Teacher scores (``pos_scores`` / ``neg_scores``) must be finite and within this magnitude. Cosine similarities,
#: cross-encoder logits and BM25 scores all sit far inside it; NaN, Infinity or 1e308 is a bug upstream.
MAX_ABS_SCORE = 1e6

#: Graded relevance in a qrels file is stored as a 32-bit integer.
GRADE_RANGE = (-(2**31), 2**31 - 1)

#: Nesting: every field ingest reads has a fixed, flat shape (a string, or a list of strings or numbers, one level below
#: the record), so a deeper value in such a field is refused by the field rules, naming line and field. Keys ingest
#: does not read are skipped at any depth (DuckDB's reader is not recursive); the Python line scan hands a line nested
#: deeper than its own parser allows (about this many levels) to DuckDB instead of failing.
PYTHON_JSON_DEPTH = 900

#: Characters that do not count as text: a query or passage made only of these is refused as blank (and an export
#: never writes one). Python's whitespace (str.isspace), the invisible format characters that editors and scrapers
#: leave behind, and the C0/C1 control characters (NUL, backspace, DEL, ... : a text of only those is a broken
#: decode, not a passage).
BLANK_CHARS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
    "\u180e\u200b\u200c\u200d\u2060\ufeff"
    + "".join(map(chr, [*range(0x00, 0x09), *range(0x0e, 0x1c), *range(0x7f, 0x85), *range(0x86, 0xa0)]))
)

#: Ingest's scratch folders (``auditor-ingest-<pid>-*`` in the temp directory) left by a killed process are removed by
#: the next ingest once older than this and no longer owned by a live process.
STALE_TEMP_SECONDS = 3600
