"""The warm service: settings, models, stage caches and pinned galleries loaded once, queries answered many times.

Model work runs on one worker thread, so the HTTP event loop stays free and each model serves one batch
at a time; at most `serve.max_pending` query requests are admitted (running or waiting), and one more
is refused at once (`QueueFull`) rather than queued without bound.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

import r3tasks
from r3tasks.errors import R3Error, SourceError
from r3tasks.gallery.catalog import list_galleries
from r3tasks.gallery.filters import check_where, normalise_where
from r3tasks.gallery.pinned import PinnedGallery
from r3tasks.inputs.queries import Query, TextQuery, query_from_row
from r3tasks.models.registry import shared_embedder
from r3tasks.query.output import batch_caches, batch_lineage, result_of
from r3tasks.query.pipeline import answer
from r3tasks.query.state import QueryState
from r3tasks.serve.galleries import GalleryFollower, NotFound, gallery_settings
from r3tasks.settings.operations import ServeSettings
from r3tasks.settings.tree import R3Settings

log = logging.getLogger(__name__)

# What a request's row errors name as their file, as a queries file's errors name the file.
REQUEST = Path("request")
LOOPBACK_NAMES = frozenset({"localhost"})


class QueueFull(R3Error):
    """`serve.max_pending` query requests are already admitted (HTTP 503)."""


class QueryRequest(BaseModel):
    """The body of `POST /v1/query`."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Any] = Field(
        min_length=1,
        description="Rows of the queries-file schema: composed {id, source, edit} or text {id, text}, with the "
        "optional source_text and gallery_group. A malformed row is that query's error, not the request's.",
    )
    where: str | None = Field(
        None, description="Search only the gallery rows this filter keeps (LanceDB SQL on the stored columns)."
    )
    top_k: int | None = Field(None, ge=1, description="Cut each ranking to this many items; None keeps all.")
    gallery: str | None = Field(None, description="Which gallery of the data home; None is the served one.")
    gallery_version: StrictInt | StrictStr | None = Field(
        None, description="A table version number or tag (e.g. refresh-12) to pin; None is the latest."
    )


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_binding(serve: ServeSettings) -> None:
    """`R3Error` when the service would listen beyond this machine without a token to check."""
    if not is_loopback(serve.host) and serve.token is None:
        raise R3Error(
            f"binding {serve.host} exposes the service beyond this machine: set a token first "
            "(R3_SERVE__TOKEN or serve.token), or bind 127.0.0.1"
        )


def read_rows(rows: Sequence[object]) -> list[Query | SourceError]:
    """Each row as a query, or why it cannot be one (a malformed row, a repeated id), in request order."""
    seen: set[str] = set()
    out: list[Query | SourceError] = []
    for i, raw in enumerate(rows):
        at = f"queries[{i}]"
        try:
            query = query_from_row(REQUEST, at, raw)
        except SourceError as error:
            out.append(error)
            continue
        if query.id in seen:
            out.append(SourceError(f"{REQUEST}: {at}: duplicate query id {query.id!r}"))
            continue
        seen.add(query.id)
        out.append(query)
    return out


def unread_result(raw: object, error: SourceError, lineage: dict) -> dict:
    """The result of a row that is not a query, in the same schema as an answered one."""
    fields = raw if isinstance(raw, dict) else {}
    row_id = fields.get("id", fields.get("query_id"))
    kind = "composed" if {"source", "edit", "video_source", "modification_text"} & fields.keys() else None
    kind = kind or ("text" if "text" in fields else None)
    placeholder = QueryState(query=TextQuery(id="", text=""), error=str(error))
    return {**result_of(placeholder, lineage), "id": row_id if _printable(row_id) else None, "kind": kind}


def _printable(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")  # a JSON "\udce9" escape is a lone surrogate no response can carry
    except UnicodeEncodeError:
        return False
    return True


class QueryService:
    """One process's warm state: call `submit` (from any thread) per query request; `close` at shutdown."""

    def __init__(self, settings: R3Settings, code_version: str = r3tasks.__version__) -> None:
        self.settings = settings
        self.code_version = code_version
        self.caches = batch_caches(settings)  # held, so their size bound is tracked across requests
        self.embedder = shared_embedder(settings)  # loaded now: the first request should not wait for it
        self.models_used: dict[str, str | None] = {
            "embedder": self.embedder.fingerprint,
            "reasoner": None,
            "reranker": None,
        }
        self._followers: dict[str, GalleryFollower] = {}
        self._followers_lock = threading.Lock()
        self.follower(settings.gallery.name)  # pinned now: an unknown or empty gallery fails the start
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r3-serve-models")

    # -- galleries -----------------------------------------------------------------------------------
    def follower(self, name: str | None = None) -> GalleryFollower:
        """The served state of gallery `name` (the served one when None), pinned on first use; `NotFound`."""
        name = name or self.settings.gallery.name
        with self._followers_lock:
            found = self._followers.get(name)
        if found is not None:
            return found
        created = GalleryFollower(gallery_settings(self.settings, name))
        with self._followers_lock:
            return self._followers.setdefault(name, created)

    def galleries(self) -> dict:
        return {
            "uri": self.settings.gallery_uri,
            "served": self.settings.gallery.name,
            "galleries": [g.to_dict() for g in list_galleries(self.settings)],
        }

    # -- queries -------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, request: QueryRequest) -> Future:
        """Admit the request and queue it for the model thread; `QueueFull` at once when
        `serve.max_pending` are admitted. The future's result is the response payload."""
        with self._pending_lock:
            if self._pending >= self.settings.serve.max_pending:
                raise QueueFull(f"{self._pending} query requests are already admitted (serve.max_pending); retry later")
            self._pending += 1
        try:
            future = self._executor.submit(self.run, request)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def run(self, request: QueryRequest) -> dict:
        """Answer one request on the calling thread: `{"lineage": ..., "results": [...]}` as a batch writes
        them (without its artifacts). `NotFound`, or `FilterError` for a filter that cannot run."""
        follower = self.follower(request.gallery)
        view = follower.at(request.gallery_version)  # this request's version, whatever a refresh does meanwhile
        where = normalise_where(request.where)
        check_where(view, where, label="where")
        rows = read_rows(request.queries)
        queries = [row for row in rows if not isinstance(row, SourceError)]
        before = {name: cache.counts() for name, cache in self.caches.items()}
        states = answer(queries, view, follower.settings, self.caches, where, logger=log)
        lineage = self._lineage(states, view, follower.settings, where, before)
        answered = iter(states)
        results = [
            unread_result(raw, row, lineage) if isinstance(row, SourceError) else result_of(next(answered), lineage)
            for raw, row in zip(request.queries, rows)
        ]
        if request.top_k is not None:
            for result in results:
                result["ranked"] = result["ranked"][: request.top_k]
        return {"lineage": lineage, "results": results}

    def _lineage(
        self,
        states: Sequence[QueryState],
        view: PinnedGallery,
        settings: R3Settings,
        where: str | None,
        before: dict[str, dict[str, int]],
    ) -> dict:
        lineage = batch_lineage(states, view, settings, self.caches, self.code_version, where)
        # The caches live as long as the service; a response counts its own hits and misses, as a batch does.
        lineage["cache"] = {
            name: {key: counts[key] - before[name][key] for key in counts} for name, counts in lineage["cache"].items()
        }
        for role in ("reasoner", "reranker"):
            self.models_used[role] = lineage[role] or self.models_used[role]
        return lineage

    # -- state ---------------------------------------------------------------------------------------
    def health(self) -> dict:
        """The served gallery's pinned and latest table versions, the models loaded, the queue."""
        follower = self.follower()
        view = follower.current()
        return {
            "status": "ok",
            "gallery": {
                "name": follower.name,
                "uri": view.ref.uri,
                "table": view.ref.table,
                "version": view.ref.version,
                "latest_version": follower.latest_version(),
                "rows": len(view),
            },
            "models": dict(self.models_used),
            "pending": self._pending,
            "max_pending": self.settings.serve.max_pending,
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["NotFound", "QueryRequest", "QueryService", "QueueFull", "check_binding", "is_loopback", "read_rows"]
