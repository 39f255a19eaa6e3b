"""3. Recall: exact and ANN top-50 search in LanceDB against a numpy matrix product, at 10k / 100k / 1M
rows of 384-d and 2048-d random unit vectors.

Per size, side by side in one run:
- numpy floor: the vectors in RAM, ``X @ q`` (or ``Q @ X.T`` for a batch) and argpartition;
- LanceDB exact: flat cosine search (``bypass_vector_index``), one query, and a batch in one call;
- `PinnedGallery.search`: the query flow's own call (candidate_pool 0 asks for every row's score,
  50 for a top-50), on a table written with the gallery schema. It reads the pinned version's
  vectors once into RAM (timed on its own: pin + first search) and then searches in memory, so it
  is compared with the numpy floor; `search_many` is timed on the same batches of 32;
- LanceDB ANN: IVF_HNSW_SQ (and IVF_PQ at the small sizes), cosine, with `nprobes` / `ef` /
  `refine_factor` tuned on a grid; recall@50 is measured against the exact top-50 from numpy;
- a clustered control (unit vectors around n/1000 random centres, cosine ~0.7 to their centre) for
  the ANN rows: random vectors in high dimensions have no neighbourhood structure for an index to use.

Tables are written once under benchmarks/out/recall and reused (same seed, same rows); the ANN
index is rebuilt in every run, so its build time is measured, and dropped afterwards.

Cases measured in a run replace the stored ones with the same rows x dim x data in
benchmarks/results/recall.json; the others are kept, each with its own run metadata (time, load
average, command, code), so some cases can be re-measured alone:
``python -m benchmarks.recall --cases 1Mx384:clustered 1Mx384:random`` (see ``--help``).
"""

from __future__ import annotations

from benchmarks.recall.cases import (  # noqa: F401
    DATA,
    FULL_PLAN,
    QUICK_PLAN,
    _command_line,
    _git,
    _key,
    _pinned,
    _stored_builds,
    case,
    case_label,
    clustered_rows,
    merge_cases,
    run,
    stored_cases,
)
from benchmarks.recall.cli import main, parse_case  # noqa: F401
from benchmarks.recall.data import (  # noqa: F401
    BATCH,
    DIMS,
    NAME,
    SEED,
    TABLE_VERSION,
    TITLE,
    GiB,
    K,
    _open_or_write,
    numpy_topk,
    unit_rows,
)
from benchmarks.recall.search import (  # noqa: F401
    ANN_KINDS,
    MAX_BUILD_S,
    Builds,
    _ann_config,
    _ann_grid,
    _ann_kinds,
    _configure,
    _ids_to_rows,
    _lance_batch,
    _lance_single,
    _latencies,
    _measure_ann,
    _pinned_ann,
    _projected_skip,
    _recall,
    _setting,
)
from benchmarks.recall.summary import (  # noqa: F401
    ANN_TARGET_S,
    _ann_target_row,
    _best_ann,
    _missing_reason,
    _ms,
    _p,
    _pinned_rows,
    _rows,
    _secs,
    _write_partial,
    summarise,
)
