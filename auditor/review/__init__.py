"""Review: which candidate an annotator sees next, what they said, and the work that keeps both fast.

Modules, lowest layer first (a module imports only from layers below its own):

0. ``choice``      the queue an annotator chose (:class:`QueueChoice`, one frozen value) and the double-annotation
                   routing rule
1. ``state``       what a request knows of the store: model, export settings, the fingerprint of the rows it reads
   ``leases``      leases (who holds which item now) and skips
   ``verdicts``    verdict events (insert-only), undo, progress per band
   ``context``     what an annotator sees beside one item
   ``orders``      the orders' SQL over a page and the exclusion rule (judged, held, skipped)
2. ``background``  the one owner of a store's background work (page rebuilds, refits, prefetches), one ``close()``
   ``cache``       pages of the orders in a private in-memory DuckDB, keyed by fingerprint, evicted oldest first
   ``io``          verdicts in and out as JSONL
3. ``snapshots``   building each order's page from the store, and the export page's per-verdict patch
4. ``queue``       the entry points: :func:`build_queue`, :func:`next_item`, :func:`claim`, :func:`hold`
5. ``refit``       risk refits started by verdicts, run by the background owner
   ``worklist``    one annotator's session in the app: held items, the one on screen, prefetching

The queue never copies a whole order: a page is a prefix of it (the first few thousand items), grown when
annotators get past it, so a request costs the page, not the store.
"""

from .choice import BAND_LEVEL_SQL, BANDS, ITEM_COLUMNS, MODES, RECORDED_MODES, QueueChoice, needs_two_annotators
from .context import SNIPPET_CHARS, item_context, others_with_texts, sibling_texts
from .queue import build_queue, claim, hold, next_item, risk_of
from .state import settle
from .verdicts import VERDICTS, record_verdict, record_verdicts, review_progress, undo_last

__all__ = [
    "BAND_LEVEL_SQL", "BANDS", "ITEM_COLUMNS", "MODES", "RECORDED_MODES", "SNIPPET_CHARS", "VERDICTS", "QueueChoice",
    "build_queue", "claim", "hold", "item_context", "needs_two_annotators", "next_item", "others_with_texts",
    "record_verdict", "record_verdicts", "review_progress", "risk_of", "settle", "sibling_texts", "undo_last",
]
