"""The one records reader: BOMs, mixed query kinds, bad bytes and bad rows as one file:line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r3tasks.datasets import load_generic
from r3tasks.errors import SourceError
from r3tasks.inputs.queries import ComposedQuery, TextQuery, load_queries
from r3tasks.inputs.rows import read_records
from r3tasks.inputs.sources import discover

REPO = Path(__file__).resolve().parents[1]


def test_csv_with_a_bom_reads_the_same_as_without(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("id,text\na,a red ball\n", encoding="utf-8")
    bom = tmp_path / "bom.csv"
    bom.write_text("id,text\na,a red ball\n", encoding="utf-8-sig")
    assert [i.id for i in discover(bom, [".mp4"])] == [i.id for i in discover(plain, [".mp4"])] == ["a"]
    assert read_records(bom) == read_records(plain)


def test_a_csv_queries_file_mixes_composed_and_text_rows(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("id,source,edit,text\nc1,dog,make it night,\nt1,,,a cat sleeping\n", encoding="utf-8")
    composed, text = load_queries(path)
    assert isinstance(composed, ComposedQuery) and (composed.source, composed.edit) == ("dog", "make it night")
    assert isinstance(text, TextQuery) and text.text == "a cat sleeping"
    assert composed.source_text is None and composed.gallery_group is None  # blank cells are absent, not ""


def test_the_same_mixed_csv_works_as_a_benchmark_queries_file(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("\ufeffid,text\ndog,a dog\n", encoding="utf-8")
    (tmp_path / "q.csv").write_text("id,source,edit,text\nc1,dog,make it night,\nt1,,,a dog\n", encoding="utf-8")
    bench = load_generic(tmp_path / "m.csv", tmp_path / "q.csv")
    assert [type(q).__name__ for q in bench.queries] == ["ComposedQuery", "TextQuery"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_bad_bytes_name_the_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q{suffix}"
    good = {"id": "a", "text": "x"}
    if suffix == ".jsonl":
        path.write_bytes(json.dumps(good).encode() + b'\n{"id": "b", "text": "caf\xe9"}\n')
    elif suffix == ".csv":
        path.write_bytes(b"id,text\na,x\nb,caf\xe9\n")
    else:
        path.write_bytes(b'[{"id": "a", "text": "x"},\n {"id": "b", "text": "caf\xe9"}]')
    line = 3 if suffix == ".csv" else 2
    with pytest.raises(SourceError, match=rf"q\{suffix}:{line}: not UTF-8 text"):
        load_queries(path)
    with pytest.raises(SourceError, match=rf"q\{suffix}:{line}: not UTF-8 text"):
        discover(path, [".mp4"])


def test_a_bad_field_names_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "edit": ["not", "text"], "source": "a"}\n')
    with pytest.raises(SourceError, match=r"q\.jsonl:2: 'edit' must be a string, got list"):
        load_queries(path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "caf\\udce9", "text": "x"}\n')
    with pytest.raises(SourceError, match=r"m\.jsonl:1: 'id' .* not valid Unicode"):
        discover(manifest, [".mp4"])


def _cli(*argv: str, home: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "R3_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flows.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_a_malformed_queries_file_is_one_line_and_exit_2_without_prefect(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{oops\n')
    done = _cli("query", str(bad), "--out", str(tmp_path / "o.json"), "--preset", "tiny", home=tmp_path / "h")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert lines == [f"r3 query: {bad}:2: bad JSON line: Expecting property name enclosed in double quotes (column 2)"]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {"prefect", "lancedb", "torch"} & imported


def test_a_malformed_manifest_and_an_unindexed_gallery_fail_before_any_flow(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n,x.mp4\n")
    done = _cli("index", str(manifest), "--preset", "tiny", home=tmp_path / "h")
    assert done.returncode == 2 and f"{manifest}:2: item has no `id`" in done.stderr
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "text": "x"}\n')
    done = _cli(
        "query",
        str(queries),
        "--out",
        str(tmp_path / "o.json"),
        "--gallery",
        "mine",
        "--preset",
        "tiny",
        home=tmp_path / "h",
    )
    assert done.returncode == 2 and "gallery 'mine' has not been indexed" in done.stderr
    assert "prefect" not in {line.split("|")[-1].strip() for line in done.stderr.splitlines()}


def test_a_bad_gallery_name_is_refused_with_the_rule(tmp_path: Path) -> None:
    done = _cli("index", str(tmp_path), "--gallery", "../etc", home=tmp_path / "h")
    assert done.returncode == 2 and "gallery name '../etc' is not allowed" in done.stderr
