"""Choice of negatives: verdicts and bands respected, deterministic per seed, every strategy."""

from __future__ import annotations

import pytest

from auditor.select import OUTPUT_COLUMNS, select_negatives, short_queries
from auditor.store import open_store

from conftest import HANDBUILT_MODEL, copy_store

STRATEGIES = ["top", "random", "simans", "band-mix"]


def verdict(con, q, d, v, who="ann", undoes=None) -> int:
    return con.execute(
        "INSERT INTO verdicts (query_id, doc_id, verdict, annotator, undoes) VALUES (?, ?, ?, ?, ?) RETURNING event_id",
        [q, d, v, who, undoes],
    ).fetchall()[0][0]


def picked(con, n=5, **kw) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for qid, did in select_negatives(con, n, **kw).project("query_id, doc_id").fetchall():
        out.setdefault(qid, []).append(did)
    return out


def test_top_keeps_non_suspicious_by_score_with_slots(handbuilt_store):
    rel = select_negatives(handbuilt_store, 5, drop_unreviewed_suspicious=True)
    assert tuple(rel.columns) == OUTPUT_COLUMNS
    rows = [dict(zip(OUTPUT_COLUMNS, r)) for r in rel.fetchall()]
    assert {r["band"] for r in rows} <= {"ambiguous", "too_easy"}
    assert picked(handbuilt_store, drop_unreviewed_suspicious=True) == {
        "q1": ["n3", "n4"], "q2": ["n6", "n7"], "q3": ["n8", "n9", "n1"]}
    assert [r["slot"] for r in rows if r["query_id"] == "q3"] == [1, 2, 3]
    assert {(r["query_id"], r["doc_id"]): r["source"] for r in rows}[("q3", "n1")] == "dense"
    # without risk rows and without the band filter every candidate is eligible: the hardest five, in order
    assert picked(handbuilt_store)["q1"] == ["n1", "n2", "n3", "n4"]


def test_confirmed_false_negative_is_never_returned(handbuilt_store):
    verdict(handbuilt_store, "q3", "n8", "false_negative", "alice")
    verdict(handbuilt_store, "q3", "n8", "true_negative", "bob")  # another annotator disagrees: still excluded
    for strategy in STRATEGIES:
        for drop in (True, False):
            got = picked(handbuilt_store, 5, strategy=strategy, drop_unreviewed_suspicious=drop,
                         random_window=(1, 50))
            assert "n8" not in got.get("q3", []), (strategy, drop)


def test_undone_false_negative_comes_back(handbuilt_store):
    ev = verdict(handbuilt_store, "q3", "n8", "false_negative")
    assert "n8" not in picked(handbuilt_store)["q3"]
    verdict(handbuilt_store, "q3", "n8", "undo", undoes=ev)
    assert "n8" in picked(handbuilt_store)["q3"]


def test_suspicious_needs_a_true_negative_verdict_when_asked(handbuilt_store):
    def strict():
        return picked(handbuilt_store, drop_unreviewed_suspicious=True)

    assert "n1" not in strict()["q1"]
    verdict(handbuilt_store, "q1", "n1", "unsure")
    assert "n1" not in strict()["q1"]
    verdict(handbuilt_store, "q1", "n1", "true_negative", "bob")
    assert strict()["q1"][0] == "n1"  # highest s_neg, now usable
    verdict(handbuilt_store, "q1", "n1", "false_negative", "carol")
    assert "n1" not in strict()["q1"]
    # keep unreviewed suspicious: n2 comes in, n1 stays out (confirmed false negative)
    assert picked(handbuilt_store, drop_unreviewed_suspicious=False)["q1"] == ["n2", "n3", "n4"]


def test_a_labeled_positive_is_never_a_negative(handbuilt_store):
    con = handbuilt_store
    con.execute("INSERT INTO candidates (query_id, doc_id, source) VALUES ('q1', 'p1', 'given')")
    con.execute("INSERT INTO scores (model, query_id, doc_id, s_neg, s_pos_min, s_pos_mean, s_pos_max, sim_to_pos, rank) "
                "VALUES (?, 'q1', 'p1', 0.5, 0.8, 0.8, 0.8, 1.0, 9)", [HANDBUILT_MODEL])
    con.execute("INSERT INTO bands VALUES ('default', ?, 'q1', 'p1', 'ambiguous', 'simans', 1.0)", [HANDBUILT_MODEL])
    for strategy in STRATEGIES:
        assert "p1" not in picked(con, strategy=strategy, drop_unreviewed_suspicious=False).get("q1", [])


def test_short_queries_lists_what_is_missing(handbuilt_store):
    assert short_queries(handbuilt_store, 3, drop_unreviewed_suspicious=True).fetchall() == [("q1", 2), ("q2", 2)]
    assert short_queries(handbuilt_store, 2, drop_unreviewed_suspicious=True).fetchall() == []
    assert short_queries(handbuilt_store, 4).fetchall() == [("q2", 3), ("q3", 3)]


def test_invalid_arguments_are_explained(handbuilt_store):
    with pytest.raises(ValueError, match="unknown strategy"):
        select_negatives(handbuilt_store, 5, strategy="best")
    with pytest.raises(ValueError, match=">= 1"):
        select_negatives(handbuilt_store, 0)
    with pytest.raises(ValueError, match="random_window"):
        select_negatives(handbuilt_store, 5, strategy="random", random_window=(10, 2))
    with pytest.raises(ValueError, match="band_mix"):
        select_negatives(handbuilt_store, 5, strategy="band-mix", band_mix={"ambiguous": -1})


@pytest.fixture
def mined(tmp_path, mined_cranfield_path):
    con = open_store(copy_store(mined_cranfield_path, tmp_path / "sel.duckdb"))
    yield con
    con.close()


def test_strategies_are_deterministic_per_seed_and_seeds_differ(mined):
    for strategy in ("random", "simans", "band-mix"):
        a = select_negatives(mined, 5, strategy=strategy, seed=1).fetchall()
        assert a == select_negatives(mined, 5, strategy=strategy, seed=1).fetchall()
        b = select_negatives(mined, 5, strategy=strategy, seed=2).fetchall()
        assert a != b, strategy


def test_random_respects_the_rank_window(mined):
    rows = select_negatives(mined, 5, strategy="random", random_window=(10, 30)).project("query_id, rank").fetchall()
    assert rows and all(10 <= r[1] <= 30 for r in rows)
    assert len({r[0] for r in rows}) > 200


def test_band_mix_follows_the_shares_where_possible(mined):
    mix = {"ambiguous": 0.6, "too_easy": 0.4}
    rows = mined.execute(f"""
        WITH sel AS ({select_negatives(mined, 5, strategy='band-mix', band_mix=mix, max_risk=None).sql_query()}),
        avail AS (SELECT query_id, count(*) FILTER (WHERE band = 'ambiguous') a, count(*) FILTER (WHERE band = 'too_easy') e
                  FROM bands WHERE config = 'default' GROUP BY 1)
        SELECT count(*) FILTER (WHERE band = 'ambiguous'), count(*) FILTER (WHERE band = 'too_easy')
        FROM sel JOIN avail USING (query_id) WHERE a >= 3 AND e >= 2""").fetchall()[0]
    assert rows[0] > 0 and rows[0] == 1.5 * rows[1]


def test_simans_prefers_high_weights(mined):
    sel = select_negatives(mined, 5, strategy="simans").sql_query()
    picked_w, all_w = mined.execute(f"""
        SELECT (SELECT avg(b.weight) FROM ({sel}) s JOIN bands b USING (query_id, doc_id) WHERE b.config = 'default'),
               (SELECT avg(weight) FROM bands WHERE config = 'default' AND band <> 'suspicious')""").fetchall()[0]
    assert picked_w > all_w
