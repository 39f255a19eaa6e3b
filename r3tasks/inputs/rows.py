"""One reader for row files (CSV with or without a BOM, JSONL, JSON) and the pydantic models of their rows.

Gallery manifests (`sources`), query files (`queries`) and benchmark files (`datasets`) all read
through here, so they agree on encodings, blank cells and error messages. Every problem raises
`SourceError` naming the file, the line (or JSON entry) and the reason, never a traceback.
A blank CSV cell, an empty or whitespace-only string and JSON null all mean "absent".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from r3tasks.errors import SourceError

Where = int | str  # a file line number, or "entry 3" / "section 'ss2' entry 3" for JSON
Row = tuple[Where, dict[str, Any]]

ID_MAX_CHARS = 512


def where(path: Path, line: Where | None = None) -> str:
    """``file:line`` for a line number, ``file: entry 3`` for a JSON entry, ``file`` alone otherwise."""
    if line is None:
        return str(path)
    return f"{path}:{line}" if isinstance(line, int) else f"{path}: {line}"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM dropped); undecodable bytes name the line they are on."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(
            f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None


def read_csv(path: Path, required: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, each with the file line it ends on; checks columns and field counts."""
    text = read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames
        if not header:
            raise SourceError(f"{path}: empty file, expected a header with columns {', '.join(required) or 'id'}")
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        rows: list[tuple[int, dict[str, str]]] = []
        for row in reader:
            if None in row:
                raise SourceError(f"{path}:{reader.line_num}: more fields than the header's {len(header)}")
            if any(v is None for v in row.values()):
                raise SourceError(f"{path}:{reader.line_num}: fewer fields than the header's {len(header)}")
            rows.append((reader.line_num, row))
        return rows
    except csv.Error as exc:
        raise SourceError(f"{path}: malformed CSV ({exc})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{exc.lineno}: bad JSON: {exc.msg} (column {exc.colno})") from None


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Objects of a JSON Lines file with their line numbers; blank lines are skipped."""
    data = _read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"{path}:{n}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            ) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{n}: bad JSON line: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


def json_entries(path: Path, data: list[Any], label: str = "") -> list[Row]:
    """Entries of a JSON list as rows; each must be an object."""
    rows: list[Row] = []
    for i, obj in enumerate(data):
        entry = f"{label}entry {i}"
        if not isinstance(obj, dict):
            raise SourceError(f"{where(path, entry)}: expected a JSON object, got {type(obj).__name__}")
        rows.append((entry, obj))
    return rows


def read_records(path: Path, required: Sequence[str] = (), list_key: str = "items") -> list[Row]:
    """Rows of a CSV, JSONL/NDJSON or JSON file (a list of objects, or ``{list_key: [...]}``)."""
    suffix = path.suffix.lower()
    rows: list[Row]
    if suffix == ".csv":
        return list(read_csv(path, required))
    if suffix in (".jsonl", ".ndjson"):
        rows = list(read_jsonl(path))
    elif suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get(list_key), list):
            data = data[list_key]
        if not isinstance(data, list):
            raise SourceError(f"{path}: expected a JSON list of objects (or {{{list_key!r}: [...]}})")
        rows = json_entries(path, data)
    else:
        raise SourceError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .jsonl or .json)")
    for at, obj in rows:
        missing = [c for c in required if c not in obj]
        if missing:
            raise SourceError(f"{where(path, at)}: missing field(s) {', '.join(missing)}")
    return rows


# --------------------------------------------------------------------------- row models


class _RowModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    # Fields kept exactly as written (a user's words go to the models as given); others are stripped.
    _verbatim: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any, info: ValidationInfo) -> Any:
        # A CSV has no null: its empty cell is the JSON file's missing key.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, (dict, list)):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        return str(value) if info.field_name in cls._verbatim else str(value).strip()


def _valid_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. a JSON "\udce9" escape
        raise ValueError(f"{value!r} is not valid Unicode text") from None
    if len(value) > ID_MAX_CHARS:
        raise ValueError(f"longer than {ID_MAX_CHARS} characters")
    return value


class ManifestRow(_RowModel):
    """One gallery item of a manifest: `id`, and `path` (relative to the manifest) and/or `text`."""

    id: str | None = None
    path: str | None = None
    text: str | None = None
    group: str | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        return _valid_id(value)


class QueryRow(_RowModel):
    """One query: composed (`source` + `edit`) or text (`text`); CoVR-R's field names are accepted."""

    id: str | None = None
    query_id: str | None = None
    source: str | None = None
    video_source: str | None = None
    edit: str | None = None
    modification_text: str | None = None
    source_text: str | None = None
    text: str | None = None
    gallery_group: str | None = None
    section: str | None = None
    # A composed query's source may be a moment: seconds from the start of the source video.
    start_s: float | None = None
    end_s: float | None = None

    _verbatim: ClassVar[frozenset[str]] = frozenset({"edit", "modification_text", "text"})

    @property
    def query_key(self) -> str | None:
        return self.id or self.query_id

    @property
    def source_ref(self) -> str | None:
        return self.source or self.video_source

    @property
    def edit_text(self) -> str | None:
        return self.edit or self.modification_text


M = TypeVar("M", bound=BaseModel)


def parse_row(model: type[M], path: Path, at: Where, row: object) -> M:
    """`row` as `model`, or a `SourceError` naming the file, the line and the field."""
    if not isinstance(row, dict):
        raise SourceError(f"{where(path, at)}: expected an object, got {type(row).__name__}")
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "row"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SourceError(f"{where(path, at)}: {field!r} {message}") from None
