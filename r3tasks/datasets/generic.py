"""Generic benchmarks (manifest + queries + qrels files) and `load_benchmark`, which picks the loader."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from r3tasks.datasets.common import Benchmark, EgoCVRSetting, _read_json, _records, _where
from r3tasks.datasets.covr import load_covrr_json, load_webvid_covr_csv
from r3tasks.datasets.egocvr import default_egocvr_dir, load_egocvr
from r3tasks.datasets.swap import load_egocvr_swap
from r3tasks.errors import SourceError
from r3tasks.inputs.queries import ComposedQuery, TextQuery
from r3tasks.inputs.rows import ManifestRow, QueryRow, parse_row, read_text
from r3tasks.inputs.sources import GalleryItem


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _load_manifest(path: Path) -> list[GalleryItem]:
    items: list[GalleryItem] = []
    first_seen: dict[str, int | str] = {}
    for where, raw in _records(path, ("id",)):
        row = parse_row(ManifestRow, path, where, raw)
        if row.id is None:
            raise SourceError(f"{_where(path, where)}: empty 'id'")
        if row.id in first_seen:
            raise SourceError(f"{_where(path, where)}: duplicate item id {row.id!r} (first at {first_seen[row.id]})")
        first_seen[row.id] = where
        if row.path is None and row.text is None:
            raise SourceError(f"{_where(path, where)}: item {row.id!r} has neither a path nor a text")
        items.append(GalleryItem(row.id, _resolve(path.parent, row.path) if row.path else None, row.text, row.group))
    return items


def _load_queries(path: Path, item_ids: set[str]) -> list[ComposedQuery | TextQuery]:
    queries: list[ComposedQuery | TextQuery] = []
    first_seen: dict[str, int | str] = {}
    for where, raw in _records(path, ("id",)):
        row = parse_row(QueryRow, path, where, raw)
        qid = row.id
        if qid is None:
            raise SourceError(f"{_where(path, where)}: empty 'id'")
        if qid in first_seen:
            raise SourceError(f"{_where(path, where)}: duplicate query id {qid!r} (first at {first_seen[qid]})")
        first_seen[qid] = where
        if row.edit is not None:
            source = row.source
            if source is None:
                raise SourceError(f"{_where(path, where)}: empty 'source'")
            if source not in item_ids:
                candidate = _resolve(path.parent, source)
                source = str(candidate) if candidate.exists() else source
            queries.append(ComposedQuery(qid, source, row.edit.strip(), row.source_text, row.gallery_group))
            continue
        if row.text is None:
            raise SourceError(f"{_where(path, where)}: query {qid!r} needs 'edit' (composed) or 'text' (text query)")
        queries.append(TextQuery(qid, row.text.strip()))
    return queries


def _grade(path: Path, where: int | str, value: Any) -> int:
    try:
        grade = float(value)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{_where(path, where)}: relevance grade {value!r} is not a number") from exc
    if not grade.is_integer():
        raise SourceError(f"{_where(path, where)}: relevance grade {value!r} is not an integer")
    return int(grade)


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Qrels from JSON ``{qid: {item: grade}}`` (or ``{qid: [item, ...]}``, grade 1) or TREC text.

    TREC lines are ``qid iter item grade`` (exactly four fields; a three-field
    line is ambiguous and refused); blank lines and ``#`` lines are skipped.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        if not isinstance(data, dict):
            raise SourceError(f"{path}: expected a JSON object {{query id: {{item id: grade}}}}")
        for qid, judged in data.items():
            if isinstance(judged, list):
                judged = {str(i): 1 for i in judged}
            if not isinstance(judged, dict):
                raise SourceError(f"{path}: query {qid!r}: expected {{item id: grade}} or a list of item ids")
            qrels[str(qid)] = {str(i): _grade(path, f"query {qid!r}", g) for i, g in judged.items()}
        return qrels
    lines = read_text(path).splitlines()
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) == 4:
            qid, _, item, grade = fields
        else:
            raise SourceError(f"{path}:{n}: expected 'qid iter item grade', got {len(fields)} fields")
        judged = qrels.setdefault(qid, {})
        if item in judged:
            raise SourceError(f"{path}:{n}: item {item!r} judged twice for query {qid!r}")
        judged[item] = _grade(path, n, grade)
    return qrels


def load_generic(manifest: Path, queries: Path, qrels: Path | None = None) -> Benchmark:
    """A gallery manifest (CSV/JSONL/JSON: ``id`` and ``path`` and/or ``text``, optional ``group``),
    queries (CSV/JSONL/JSON: ``id`` plus ``source`` + ``edit`` [+ ``source_text``, ``gallery_group``]
    for a composed query, or ``text`` for a text query) and optional qrels (:func:`load_qrels`).

    Relative paths are resolved against the file's folder. Qrels that name
    unknown queries or items are kept (an unknown item is a target the gallery
    lacks) and counted in stats.
    """
    manifest, queries = Path(manifest), Path(queries)
    items = _load_manifest(manifest)
    item_ids = {it.id for it in items}
    qs = _load_queries(queries, item_ids)
    judged = load_qrels(Path(qrels)) if qrels is not None else {}
    query_ids = {q.id for q in qs}
    stats = {
        "items": len(items),
        "queries": len(qs),
        "qrels_unknown_queries": sum(q not in query_ids for q in judged),
        "qrels_unknown_items": sum(i not in item_ids for g in judged.values() for i in g),
    }
    return Benchmark(manifest.stem, items, qs, judged, "global", stats)


def _first_existing(folder: Path, stem: str, suffixes: Iterable[str]) -> Path | None:
    for s in suffixes:
        if (folder / f"{stem}{s}").is_file():
            return folder / f"{stem}{s}"
    return None


# Benchmark names read from the EgoCVR folder (`data.egocvr_dir`, else the default location).
SWAP_NAMES = {
    "egocvr-swap": {},
    "egocvr-swap2": {"n_words": 2},
    "egocvr-swap-sparse": {"sparse": True},
    "egocvr-swap-redraw": {"redraw": True},
}
EGOCVR_NAMES = ("egocvr", "egocvr-global", "egocvr-local", *SWAP_NAMES)


def load_benchmark(name_or_path: str | Path, **kw: Any) -> Benchmark:
    """``"egocvr"``/``"egocvr-global"``, ``"egocvr-local"``, ``"egocvr-swap"``, ``"egocvr-swap2"``,
    ``"egocvr-swap-sparse"``, ``"egocvr-swap-redraw"`` (``folder=`` or the default location; the last four
    are WebVid-CoVR-style one- and two-word swaps of EgoCVR's narrations, `r3tasks.datasets.swap`), or a path:
    a folder holding EgoCVR's CSVs or ``manifest.*`` + ``queries.*`` [+ ``qrels.*``] (generic), a ``.csv``
    (WebVid-CoVR) or a ``.json`` (CoVR-R). Other keywords go to the loader."""
    name = str(name_or_path)
    if name.lower() in EGOCVR_NAMES:
        folder = kw.pop("folder", None) or default_egocvr_dir()
        if folder is None:
            raise SourceError(
                f"{name}: EgoCVR annotations not found; set data.egocvr_dir (R3_DATA__EGOCVR_DIR) to the folder "
                "with egocvr_annotations.csv and egocvr_data.csv"
            )
        if name.lower() in SWAP_NAMES:
            return load_egocvr_swap(Path(folder), **SWAP_NAMES[name.lower()], **kw)
        setting: EgoCVRSetting = "local" if name.lower() == "egocvr-local" else kw.pop("setting", "global")
        return load_egocvr(Path(folder), setting=setting, **kw)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "egocvr_annotations.csv").is_file():
            return load_egocvr(path, **kw)
        manifest = _first_existing(path, "manifest", (".csv", ".jsonl", ".json"))
        queries = _first_existing(path, "queries", (".jsonl", ".json", ".csv"))
        if manifest is None or queries is None:
            raise SourceError(
                f"{path}: not a benchmark folder (expected egocvr_annotations.csv, or manifest.* and queries.*)"
            )
        qrels = _first_existing(path, "qrels", (".json", ".txt", ".tsv", ".qrels"))
        # The generic files hold no split of their own: `limit` keeps the first queries, as the other loaders do.
        return load_generic(manifest, queries, qrels).first_queries(kw.get("limit"))
    if not path.exists():
        raise SourceError(f"{path}: no such benchmark name or file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_webvid_covr_csv(path, **kw)
    if suffix == ".json":
        return load_covrr_json(path, **kw)
    raise SourceError(f"{path}: cannot tell the benchmark format from the suffix {path.suffix!r}")
