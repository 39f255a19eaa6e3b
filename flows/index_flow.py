"""The gallery indexing flow: discover -> fingerprint -> plan -> sample+embed batches -> upsert -> artifacts."""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from itertools import islice
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.context import TaskRunContext
from prefect.exceptions import UnfinishedRun, UpstreamTaskError
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner
from prefect.utilities.annotations import quote

from flows.common import (
    TRANSIENT_ERRORS,
    code_version,
    flow_settings,
    result_storage,
    retry_on_transient,
    stable_hash,
)
from r3tasks.cache.stages import prune_older_than
from r3tasks.errors import ItemError, R3Error, TransientError
from r3tasks.gallery.indexing import (
    EmbeddedBatch,
    IndexPlan,
    IndexSummary,
    ItemFailure,
    KeyingResult,
    batches,
    commit_due,
    embed_batch,
    key_items,
    plan_index,
)
from r3tasks.gallery.moment_stages import (
    StageOutput,
    find_moments_stage,
    join_stages,
    screen_text_stage,
    speech_stage,
    videos,
)
from r3tasks.gallery.table import GalleryRow
from r3tasks.gallery.views import open_store
from r3tasks.inputs import preflight
from r3tasks.inputs.sources import GalleryItem, KeyedItem
from r3tasks.media.moments import SpeechTrack, VideoSpans
from r3tasks.models.registry import shared_embedder, shared_screen_text_reader, shared_speech_recognizer
from r3tasks.settings.tree import R3Settings

PROGRESS_SECONDS = 2.0


@task(name="fingerprint-content", cache_policy=NONE)
def fingerprint_task(items: list[GalleryItem], settings: R3Settings) -> KeyingResult:
    # Never cached: hashing the bytes is how a change is noticed.
    return key_items(items, settings)


@task(name="plan-index", cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_transient)
def plan_task(keying: KeyingResult, settings: R3Settings) -> IndexPlan:
    store = open_store(settings)
    stored = store.video_keys() if store.exists() else {}
    return plan_index(keying.keyed, [f.id for f in keying.failed], stored)


def _embed_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    settings: R3Settings = parameters["settings"]
    batch: list[KeyedItem] = parameters["batch"]
    return "embed-" + stable_hash(
        [(k.item.id, k.content_key, k.item.group, str(k.item.path)) for k in batch],
        shared_embedder(settings).fingerprint,
        settings.settings_hash("frames", "models"),
        settings.query.document_instruction,
    )


def _media_cache_key(stage: str, fields: set[str]) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A media stage's key: the video files it reads and only the settings it depends on, so changing OCR
    settings re-reads no speech and cuts no shots again."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        settings: R3Settings = parameters["settings"]
        batch: list[KeyedItem] = parameters["batch"]
        models = settings.models
        return f"{stage}-" + stable_hash(
            [(k.item.id, k.file_key) for k in videos(batch)],
            settings.media.model_dump(mode="json", include=fields),
            [models.backend("asr"), models.asr_model, models.asr_language] if stage == "speech" else [],
            settings.frames.fingerprint,
        )

    return key


SPAN_FIELDS = {
    "whole_clip_max_s",
    "segmentation",
    "segment_min_s",
    "segment_max_s",
    "window_overlap_s",
    "shot_threshold",
}
MEDIA_TASK = {"persist_result": True, "retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_on_transient}


@task(name="find-moments", cache_key_fn=_media_cache_key("moments", SPAN_FIELDS), **MEDIA_TASK)
def find_moments_task(batch: list[KeyedItem], settings: R3Settings) -> StageOutput[VideoSpans]:
    """Probe each video and cut a long one into moments (PySceneDetect shots, or windows)."""
    return find_moments_stage(batch, settings)


# What is said is read per video, whatever its cut: a new segmentation recognises no speech again.
@task(name="read-speech", cache_key_fn=_media_cache_key("speech", {"subtitles"}), **MEDIA_TASK)
def speech_task(
    batch: list[KeyedItem], spans: StageOutput[VideoSpans], settings: R3Settings
) -> StageOutput[SpeechTrack]:
    """Subtitles of each video, else speech recognition (`models.asr`)."""
    return speech_stage(batch, spans, settings, shared_speech_recognizer(settings))


@task(
    name="read-screen-text",
    cache_key_fn=_media_cache_key(
        "screen", {"ocr", "ocr_frames", "ocr_min_confidence", "max_text_chars", *SPAN_FIELDS}
    ),
    **MEDIA_TASK,
)
def screen_text_task(
    batch: list[KeyedItem], spans: StageOutput[VideoSpans], settings: R3Settings
) -> StageOutput[tuple[str | None, ...]]:
    """OCR of a few frames of each moment (RapidOCR), when `media.ocr` is on."""
    reader = shared_screen_text_reader(settings) if settings.media.ocr and spans.results else None
    return screen_text_stage(batch, spans, settings, reader)


@task(
    name="sample-and-embed-batch",
    cache_key_fn=_embed_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_transient,
)
def embed_batch_task(
    batch: list[KeyedItem],
    settings: R3Settings,
    spans: StageOutput[VideoSpans] | None = None,
    speech: StageOutput[SpeechTrack] | None = None,
    screen: StageOutput[tuple[str | None, ...]] | None = None,
) -> EmbeddedBatch:
    """Embed each moment of one batch (frames decoded by decord, resized on decode); cached by content and model.

    A transient failure (model server, storage) is retried; a bad item fails only itself.
    """
    if spans is None or speech is None or screen is None:
        return embed_batch(batch, shared_embedder(settings), settings)
    media, failed, notes = join_stages(spans, speech, screen)
    embedded = embed_batch(batch, shared_embedder(settings), settings, media)
    embedded.failed.extend(failed)
    embedded.notes.extend(notes)
    return embedded


def embedding_task_runner(settings: R3Settings) -> TaskRunner | None:
    """The task runner `index.task_runner` picks for the embedding stage; None keeps the flow's threads."""
    if settings.index.task_runner != "dask":
        return None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise R3Error("index.task_runner = 'dask' needs prefect-dask: pip install 'r3[dask]'") from None
    if settings.index.dask_address:
        return DaskTaskRunner(address=settings.index.dask_address)
    # One thread per worker: each worker process holds its own model, and models are not thread-safe.
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.index.dask_workers, "threads_per_worker": 1})


def _embed_one_at_a_time(
    embed: Any, stages: tuple[Any, Any, Any], batch: list[KeyedItem], settings: R3Settings
) -> EmbeddedBatch:
    """A batch still failing after its retries: run its items singly so only the culprit fails.

    Runs in the flow's process (not on Dask) and without further retries: the batch had them.
    """
    find, speech, screen = (stage.with_options(retries=0) for stage in stages)
    single = embed.with_options(retries=0)
    result = EmbeddedBatch(rows=[], failed=[])
    for keyed in batch:
        try:
            media: dict[str, Any] = {}
            if keyed.item.path is not None:
                spans = find([keyed], settings)
                media = {
                    "spans": spans,
                    "speech": speech([keyed], spans, settings),
                    "screen": screen([keyed], spans, settings),
                }
            part: EmbeddedBatch = single([keyed], settings, **media)
        except Exception as cause:  # noqa: BLE001 - whatever still fails after the retries is this item's ...
            if isinstance(cause, R3Error) and not isinstance(cause, (ItemError, TransientError)):
                raise  # ... except what is wrong for every item (a model that is not there): the run's, said once
            path = str(keyed.item.path) if keyed.item.path is not None else None
            reason = f"embedding failed after {settings.index.retries} retries ({type(cause).__name__}: {cause})"
            result.failed.append(ItemFailure(id=keyed.item.id, path=path, reason=reason))
            continue
        result.rows.extend(part.rows)
        result.failed.extend(part.failed)
        result.notes.extend(part.notes)
        result.nothing_to_read += part.nothing_to_read
    return result


def _printable(failure: ItemFailure) -> ItemFailure:
    # A non-UTF-8 file name must not break the summary, its JSON or the run's artifacts.
    if failure.path is None:
        return failure
    return replace(failure, path=failure.path.encode("utf-8", "backslashreplace").decode("utf-8"))


@task(name="upsert-rows", cache_policy=NONE, retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_transient)
def upsert_task(embedded: EmbeddedBatch, settings: R3Settings) -> int:
    from flows.writers import writer_slot

    store = open_store(settings)
    with writer_slot(store, settings):
        return store.upsert(embedded.rows)


@task(
    name="remove-stale-rows", cache_policy=NONE, retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_transient
)
def remove_task(ids: list[str], settings: R3Settings) -> int:
    from flows.writers import writer_slot

    store = open_store(settings)
    with writer_slot(store, settings):
        return store.delete_videos(ids)


@task(name="record-index-artifacts", cache_policy=NONE)
def record_artifacts(summary: IndexSummary) -> None:
    create_table_artifact(
        [
            {
                "added": summary.added,
                "updated": summary.updated,
                "unchanged": summary.unchanged,
                "removed": summary.removed,
                "failed": len(summary.failed),
                "moments stored": summary.moments,
                "moments with nothing to read": summary.nothing_to_read,
                "table version": summary.version,
            }
        ],
        key="index-counts",
        description="Items per outcome in this index run.",
    )
    create_table_artifact(
        [asdict(f) for f in summary.failed] or [{"id": "", "path": "", "reason": "no failures"}],
        key="index-failures",
        description="Items that could not be indexed, with the reason.",
    )
    if summary.notes:
        create_table_artifact(
            [{"note": note} for note in summary.notes],
            key="index-notes",
            description="Worth knowing, not failures: videos without a sound track, subtitle cues skipped.",
        )
    create_markdown_artifact(
        "\n".join(
            [
                "# Index lineage",
                f"- table: `{summary.table['name']}` at `{summary.table['uri']}`",
                f"- table version after run: **{summary.version}**",
                f"- embedder fingerprint: `{summary.embedder}`",
                f"- settings hash: `{summary.settings_hash}`",
                f"- code version: `{summary.code_version}`",
            ]
        ),
        key="index-lineage",
        description="What produced this gallery version.",
    )


@flow(name="index-gallery", log_prints=True)
def index_gallery(
    source: str,
    preset: str | None = None,
    home: str | None = None,
    overrides: dict[str, Any] | None = None,
    gallery: str = "default",
) -> dict:
    """Bring gallery GALLERY in line with SOURCE (folder or manifest); returns the run summary.

    Other galleries of the data home are never touched. Each commit, and the upkeep, holds the table's
    writer slot (flows/writers.py); when the run changed something it tags the new version, compacts and
    prunes (r3tasks/upkeep.py), records the gallery asset and emits `r3.gallery.refreshed` (flows/refresh.py).
    """
    from flows.refresh import after_refresh
    from flows.writers import writer_slot

    settings = flow_settings(preset, home, overrides, gallery)
    # The CLI's own check, first: a malformed source fails the run with its one line, before any task.
    items = preflight.gallery_source(source, settings)
    store = open_store(settings)
    previous = store.version() if store.exists() else None
    summary = _index(source, items, settings)
    with writer_slot(store, settings):
        return after_refresh(summary, open_store(settings), settings, source, gallery, previous)


def _index(source: str, items: list[GalleryItem], settings: R3Settings) -> dict:
    logger = get_run_logger()
    storage = result_storage(settings)

    # quote(): these are whole-gallery lists; Prefect would otherwise walk every element of them looking
    # for futures (about a second per 1,000 items, measured), for nothing.
    keying = fingerprint_task(quote(items), settings)
    plan = plan_task(quote(keying), settings)
    failed: list[ItemFailure] = list(keying.failed)
    logger.info(
        "gallery %r from %s: %d items, %d to embed (%d new, %d changed), %d unchanged, %d to remove, %d unreadable",
        settings.gallery.name,
        source,
        len(items),
        len(plan.to_embed),
        len(plan.to_add),
        len(plan.to_update),
        len(plan.unchanged),
        len(plan.to_remove),
        len(keying.failed),
    )

    to_embed = batches(plan.to_embed, settings.index.batch_size)
    progress_id = create_progress_artifact(0.0, key="index-progress", description="Items embedded this run")
    io_retries = {"retries": settings.index.retries, "retry_delay_seconds": settings.index.retry_delay_seconds}
    expiry = settings.index.result_expiration_s
    prune_older_than(storage, expiry)  # expired batch results: the gallery table keeps the vectors
    embed = embed_batch_task.with_options(
        result_storage=storage, **io_retries, cache_expiration=dt.timedelta(seconds=expiry) if expiry else None
    )
    upsert = upsert_task.with_options(**io_retries)
    stage_options = {**io_retries, "result_storage": storage}
    find_moments = find_moments_task.with_options(**stage_options)
    read_speech = speech_task.with_options(**stage_options)
    read_screen = screen_text_task.with_options(**stage_options)
    written_ids: set[str] = set()
    notes: list[str] = []
    nothing_to_read = 0
    moments_written = 0
    done = 0
    total = len(plan.to_embed)
    with ExitStack() as stack:
        runner = embedding_task_runner(settings) if to_embed else None  # no cluster for nothing to embed
        on_runner: Callable[[Any, dict[str, Any]], PrefectFuture[Any]]
        if runner is None:
            on_runner = lambda task_, parameters: task_.submit(**parameters)  # noqa: E731
        else:
            stack.enter_context(runner)
            logger.info("embedding on %s", type(runner).__name__)
            on_runner = runner.submit

        def submit(batch: list[KeyedItem]) -> PrefectFuture[EmbeddedBatch]:
            # A batch with videos goes through the media stages first, on the same runner; the embedding
            # waits on their futures. Text-only batches skip them (no task overhead for caption galleries).
            if not videos(batch):
                return on_runner(embed, {"batch": batch, "settings": settings})
            spans = on_runner(find_moments, {"batch": batch, "settings": settings})
            speech = on_runner(read_speech, {"batch": batch, "spans": spans, "settings": settings})
            screen = on_runner(read_screen, {"batch": batch, "spans": spans, "settings": settings})
            return on_runner(
                embed, {"batch": batch, "settings": settings, "spans": spans, "speech": speech, "screen": screen}
            )

        # A bounded window of submitted batches: decoded frames and threads stay bounded when the
        # embedder is slower than decoding. Rows are stored in order, in a few commits (see index.commit_*).
        window = max(settings.index.max_batches_in_flight, settings.index.dask_workers if runner else 1)
        in_flight: deque[tuple[list[KeyedItem], PrefectFuture[EmbeddedBatch]]] = deque()
        queued = iter(to_embed)
        pending: list[GalleryRow] = []
        last_commit = last_progress = time.monotonic()

        def commit() -> None:
            nonlocal last_commit
            nonlocal moments_written
            if pending:
                upsert(quote(EmbeddedBatch(rows=list(pending), failed=[])), settings)
                written_ids.update(row.video_id or row.id for row in pending)
                moments_written += len(pending)
                pending.clear()
            last_commit = time.monotonic()

        for batch in islice(queued, window):
            in_flight.append((batch, submit(batch)))
        while in_flight:
            batch, future = in_flight.popleft()
            try:
                embedded = future.result()
            except (*TRANSIENT_ERRORS, UpstreamTaskError, UnfinishedRun) as error:  # a media stage's failure too
                logger.warning(
                    "a batch of %d still fails after retries (%s): embedding its items singly", len(batch), error
                )
                embedded = _embed_one_at_a_time(embed, (find_moments, read_speech, read_screen), batch, settings)
            del future  # the result is held below only until its rows are committed
            for next_batch in islice(queued, 1):
                in_flight.append((next_batch, submit(next_batch)))
            pending.extend(embedded.rows)
            failed.extend(embedded.failed)
            notes.extend(embedded.notes)
            nothing_to_read += embedded.nothing_to_read
            done += len({row.video_id or row.id for row in embedded.rows}) + len(embedded.failed)
            if not in_flight or commit_due(len(pending), time.monotonic() - last_commit, settings):
                commit()
            if not in_flight or time.monotonic() - last_progress >= PROGRESS_SECONDS:
                # Each update is a round trip to the API: a few per minute show progress as well as one per batch.
                update_progress_artifact(progress_id, 100.0 * done / max(total, 1))
                last_progress = time.monotonic()
            logger.info(
                "embedded %d/%d items (%.0f%%), %d stored", done, total, 100.0 * done / max(total, 1), len(written_ids)
            )
    if total == 0:
        update_progress_artifact(progress_id, 100.0)

    for note in notes:
        logger.info("note: %s", note)
    version = remove_task.with_options(**io_retries)(quote(plan.to_remove), settings)
    store = open_store(settings)
    summary = IndexSummary(
        added=sum(1 for k in plan.to_add if k.item.id in written_ids),
        updated=sum(1 for k in plan.to_update if k.item.id in written_ids),
        unchanged=len(plan.unchanged),
        removed=len(plan.to_remove),
        failed=[_printable(f) for f in sorted(failed, key=lambda f: f.id)],
        moments=moments_written,
        nothing_to_read=nothing_to_read,
        notes=notes,
        table={"uri": store.uri, "name": store.name, "gallery": store.gallery},
        version=version,
        embedder=store.embedder_fingerprint,
        settings_hash=settings.settings_hash(),
        code_version=code_version(),
    )
    record_artifacts(summary)
    return summary.to_dict()
