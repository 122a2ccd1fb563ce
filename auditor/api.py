"""The Python API, for notebooks and pipelines: the same functions the command line and the app call.

    from auditor import api

    con = api.open_store("audit.duckdb")                # created if missing; one writer process at a time
    api.ingest(con, "data/msmarco-mined/train.jsonl")
    api.mine(con, depth=20)                             # the shipped model; model_name="path/to/folder" for another
    print(api.stats(con)["bands"]["counts"])
    api.export(con, "train.jsonl", fmt="ntuple", negatives=5)
    con.close()

(``auditor.mine`` and ``auditor.export`` are the modules; ``auditor.api`` gathers their entry points under short
names.) Every function takes the store's connection first and is documented where it lives (``help(api.mine)``).
Verdicts: :func:`record_verdict` (one) and :func:`import_verdicts` (a JSONL file, the app's export layout).
"""

from __future__ import annotations

from auditor.export import export
from auditor.ingest import ingest_path as ingest
from auditor.mine import mine
from auditor.review import record_verdict
from auditor.select import Selection
from auditor.stats import compute_stats as stats
from auditor.store import open_store
from auditor.review.io import export_verdicts, import_verdicts

__all__ = ["Selection", "export", "export_verdicts", "import_verdicts", "ingest", "mine", "open_store",
           "record_verdict", "stats"]
