"""Benchmarks as a gallery manifest, queries and qrels.

Every loader returns a :class:`Benchmark`. Gallery items carry a video path, a
text (caption, narration) or both; composed queries name their source video by
gallery item id when the source is a gallery item, else by file path, else by
the benchmark's own id (then only `source_text` can stand for it).

A query's `gallery_group`, when set, restricts its gallery to the items of that
group (EgoCVR's local setting: the clips of the source's long video; CoVR-R:
the query's section, webvid or ss2).

Malformed files raise :class:`~r3tasks.errors.SourceError` naming the file, the
line (or entry) and the reason. Data problems a benchmark is known to have
(EgoCVR's repeated clip rows, say) are not errors: they are resolved as each
loader documents and counted in ``Benchmark.stats``.
"""

from r3tasks.datasets.common import (
    COVRR_SECTION_EXT,
    Benchmark,
    EgoCVRSetting,
    NarrationStyle,
    SourceTargets,
)
from r3tasks.datasets.covr import load_covrr_json, load_webvid_covr_csv
from r3tasks.datasets.egocvr import clean_narration, default_egocvr_dir, load_egocvr
from r3tasks.datasets.generic import EGOCVR_NAMES, load_benchmark, load_generic, load_qrels
from r3tasks.inputs.queries import ComposedQuery, Query, TextQuery
from r3tasks.inputs.sources import GalleryItem

__all__ = [
    "COVRR_SECTION_EXT",
    "EGOCVR_NAMES",
    "Benchmark",
    "ComposedQuery",
    "EgoCVRSetting",
    "GalleryItem",
    "NarrationStyle",
    "Query",
    "SourceTargets",
    "TextQuery",
    "clean_narration",
    "default_egocvr_dir",
    "load_benchmark",
    "load_covrr_json",
    "load_egocvr",
    "load_generic",
    "load_qrels",
    "load_webvid_covr_csv",
]
