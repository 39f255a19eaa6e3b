"""The settings sections of operations: data locations, gallery upkeep, the inbox watcher, the query service.

Part of the one settings tree (`r3tasks.settings.R3Settings`), kept apart so that module stays about
what changes results; import them from `r3tasks.settings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from r3tasks.settings.section import Section


class DataSettings(Section):
    """Where r3 looks for data it does not ship (the current locations are the defaults)."""

    egocvr_dir: Path | None = Field(
        None,
        description="Folder with EgoCVR's egocvr_annotations.csv and egocvr_data.csv for `r3 eval egocvr`; "
        "None looks in <repo>/data/egocvr, then <repo>/../shared/data/egocvr.",
    )
    opencv_samples_dir: Path = Field(
        Path("/usr/share/doc/opencv-doc/examples/data"),
        description="OpenCV's sample videos (Debian's opencv-doc); the demo gallery copies three when present.",
    )


class UpkeepSettings(Section):
    """Gallery upkeep after each refresh: tags, compaction, version retention, one writer per table."""

    tag_refreshes: bool = Field(
        True,
        description="Tag the table version each refresh that changed something leaves (`refresh-<version>`), "
        "so a query batch can pin it by name.",
    )
    keep_refresh_tags: int = Field(
        10,
        ge=0,
        description="Refresh tags kept (newest first); older `refresh-*` tags are deleted. Tags of other "
        "names are the user's and never deleted.",
    )
    optimize_after_refresh: bool = Field(
        True,
        description="After a refresh that changed something: compact fragments, update indices and prune "
        "old versions (LanceDB `optimize()`).",
    )
    keep_versions: int = Field(
        20,
        ge=1,
        description="Untagged table versions kept, newest first; older ones are pruned by the upkeep. "
        "A tagged version is never pruned, nor anything newer than the oldest tag; LanceDB prunes by age, so a "
        "version committed within milliseconds of the oldest kept one may stay too.",
    )
    id_index: bool = Field(True, description="Keep a BTREE scalar index on `id` (upserts and deletes match on it).")
    writer_wait_seconds: float = Field(
        600.0,
        ge=0,
        description="How long a write (index run, refresh, eval indexing) waits for another writer of "
        "the same table to finish; 0 refuses at once. Enforced by a lock file beside a local table, and for a remote "
        "(s3://) table by a Prefect global concurrency limit on the configured server (flows/writers.py).",
    )
    writer_lease_seconds: float = Field(
        60.0,
        ge=60,
        description="Lease of the writer slot, renewed while the writer runs: a writer killed "
        "without cleanup (kill -9) blocks the table for about this long. Prefect's minimum is 60 s.",
    )


class WatchSettings(Section):
    """`r3 watch INBOX`: when a queries file counts as landed."""

    poll_seconds: float = Field(1.0, gt=0, description="How often the inbox folder is listed.")
    stable_polls: int = Field(
        2, ge=1, description="A file is complete once its size and mtime stayed the same for this many polls."
    )
    patterns: list[str] = Field(
        default_factory=lambda: ["*.jsonl", "*.json", "*.csv"], description="File names the watcher reports."
    )


class ServeSettings(Section):
    """`r3 serve`: the warm query service (docs/serving.md) and `r3 query --server`."""

    host: str = Field(
        "127.0.0.1",
        description="Address `r3 serve` binds (`--host`); any address but a loopback one needs `serve.token`.",
    )
    port: int = Field(8765, ge=0, le=65535, description="Port `r3 serve` listens on (`--port`); 0 picks a free one.")
    token: SecretStr | None = Field(
        None,
        description="Bearer token every request must carry (`Authorization: Bearer <token>`) when set; "
        "`r3 query --server` sends it. Required to bind a non-loopback address. Best set as R3_SERVE__TOKEN.",
    )
    max_pending: int = Field(
        8,
        ge=1,
        description="Query requests admitted at once (the one the models are answering and those waiting for "
        "them); one more is answered 503 with Retry-After, so a burst cannot queue unbounded work.",
    )
    retry_after_seconds: int = Field(2, ge=0, description="The Retry-After a 503 (queue full) carries, in seconds.")
    max_body_bytes: int = Field(
        1 << 20, ge=1, description="Largest request body accepted; a bigger one is answered 413 and read no further."
    )
    version_check_seconds: float = Field(
        1.0,
        ge=0,
        description="How often a request checks the gallery table for a version committed since (a refresh); a "
        "new one is pinned and served from the next request on. 0 checks on every request.",
    )
    client_timeout_seconds: float = Field(
        600.0, gt=0, description="How long `r3 query --server` waits for the service's answer."
    )
