"""The one settings tree of r3.

Built once (by the CLI, a flow's entry point or a test) and passed down; no
other module reads the environment. Sources, strongest first: explicit
arguments, ``R3_*`` environment variables (nested with ``__``, e.g.
``R3_MODELS__PRESET=offline``), an optional TOML file (``r3.toml`` in the
working directory, or the path in ``R3_CONFIG``), then the defaults below.
Defaults are the R^3 reference values (docs/design.md); a deliberate change is
a setting, never an edit of the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, TypeAdapter, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from r3tasks.settings.media import MediaSettings
from r3tasks.settings.operations import DataSettings, ServeSettings, UpkeepSettings, WatchSettings
from r3tasks.settings.presets import PRESET_BACKENDS, PRESET_DEFAULTS
from r3tasks.settings.query import QuerySettings
from r3tasks.settings.section import Section

Preset = Literal["tiny", "offline", "qwen3vl"]
RerankRule = Literal["yes_no_sigmoid", "rankvideo_logsumexp", "edit_likelihood"]
FingerprintMode = Literal["content", "stat"]
TaskRunnerName = Literal["thread", "dask"]

# What a gallery folder scan and a benchmark folder treat as videos, unless index.video_extensions says else.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")

DEFAULT_GALLERY = "default"
DEMO_GALLERY = "demo"
# Safe in a LanceDB table name, a folder name and an object-store key; no separators, no dots.
_GALLERY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_gallery_name(name: str) -> str:
    """`name` if it can name a gallery, else `ValueError` saying what a name may hold."""
    if not isinstance(name, str) or not _GALLERY_NAME.fullmatch(name):
        raise ValueError(
            f"gallery name {name!r} is not allowed: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("r3", appauthor=False))


class ModelSettings(Section):
    preset: Preset = Field(
        "qwen3vl",
        description="Model preset: `qwen3vl` (real Qwen3-VL checkpoints, production), "
        "`offline` (MiniLM text embedder + Gemma 3 270M, CPU, no network), "
        "`tiny` (tiny random Qwen3-VL models for tests and code-path benchmarks).",
    )
    embedder: str | None = Field(None, description="Embedder backend name; None takes the preset's.")
    reasoner: str | None = Field(None, description="Reasoner backend name; None takes the preset's.")
    reranker: str | None = Field(None, description="Reranker backend name; None takes the preset's.")
    asr: str | None = Field(
        None,
        description="Speech recognition backend (`whisper`, `pocketsphinx`, `none`); None takes the preset's. It runs "
        "only for videos without subtitles.",
    )
    asr_model: str = Field(
        "openai/whisper-large-v3-turbo",
        description="Whisper model for the `whisper` ASR backend: hub id or local path.",
    )
    asr_language: str = Field("en", description="Spoken language passed to the ASR backend.")
    embedding_model: str = Field(
        "Qwen/Qwen3-VL-Embedding-2B", description="Qwen3-VL-Embedding hub id or local path (qwen3vl preset)."
    )
    reranker_model: str = Field(
        "Qwen/Qwen3-VL-Reranker-2B", description="Qwen3-VL-Reranker hub id or local path (qwen3vl preset)."
    )
    reasoner_model: str = Field(
        "Qwen/Qwen3-VL-2B-Thinking", description="Qwen3-VL Thinking/Instruct hub id or local path (qwen3vl preset)."
    )
    revision: str | None = Field(None, description="Hub revision for the qwen3vl models; None is the default branch.")
    local_files_only: bool = Field(
        False, description="Never contact a model hub; load only local paths or the local hub cache."
    )
    embedding_dim: int | None = Field(
        None, ge=8, description="MRL truncation of embeddings to this many dimensions (re-normalised); None keeps all."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype: `auto` is bfloat16 on a GPU and float32 on a CPU."
    )
    device: str = Field("auto", description="Torch device: `auto`, `cpu`, `cuda`, `cuda:1`, ...")
    attn_implementation: str | None = Field(
        None,
        description="transformers attention implementation (`sdpa`, `flash_attention_2`, `eager`); None is the default.",
    )
    embed_batch_size: int = Field(8, ge=1, description="Items per embedder forward pass.")
    rerank_batch_size: int = Field(4, ge=1, description="(query, candidate) pairs per reranker forward pass.")
    video_min_tokens: int = Field(
        128,
        ge=1,
        description="Qwen3-VL video frames are resized to at least this many visual tokens (32x32 px "
        "each before merging), as qwen-vl-utils' VIDEO_MIN_TOKEN_NUM (the reference).",
    )
    video_max_tokens: int = Field(
        768, ge=1, description="...and at most this many per frame, qwen-vl-utils' VIDEO_MAX_TOKEN_NUM (the reference)."
    )
    video_total_tokens: int = Field(
        115_200,
        ge=1,
        description="Whole-video pixel budget in tokens: a frame gets at most total / frames x 2 tokens' pixels. "
        "The reference (qwen-vl-utils for a video file) is 0.9 x MODEL_SEQ_LEN = 0.9 x 128,000.",
    )
    embed_max_length: int = Field(
        8192,
        ge=16,
        description="Embedder token limit (Qwen3-VL-Embedding's MAX_LENGTH): longer inputs lose text "
        "from the end of the prompt, never visual tokens nor the template's closing tokens (the pooled one).",
    )
    rerank_max_length: int = Field(
        10240, ge=16, description="Reranker token limit (Qwen3-VL-Reranker's MAX_LENGTH), truncated the same way."
    )
    max_batch_tokens: int = Field(
        65_536,
        ge=1,
        description="Padded tokens (rows x longest row) per embedder/reranker forward pass: a batch over it is "
        "split (an item over it runs alone), and a batch that runs out of memory is split and retried.",
    )
    score_head_dtype: Literal["float32", "model"] = Field(
        "float32",
        description="Dtype of the reranker's yes/no head. The official Qwen3-VL-Reranker computes it in the model "
        "dtype (bfloat16 on a GPU); r3 uses float32 by default because bfloat16 keeps 8 bits of mantissa, so "
        "close candidates' sigmoid scores round to ties and reorder (the hidden state is the model's either way).",
    )
    rerank_rule: RerankRule = Field(
        "yes_no_sigmoid",
        description="Reranker score: sigmoid(logit_yes - logit_no) at the last position (Qwen3-VL-Reranker), "
        "or RankVideo's logsumexp over yes-variants minus logsumexp over no-variants. `edit_likelihood` (the "
        "offline Gemma reranker only) scores how well the candidate explains the query: mean log P(edit | source "
        "caption, candidate caption) for composed queries, log P(query | candidate caption) for text queries.",
    )
    reasoning_max_new_tokens: int = Field(4096, ge=1, description="Token limit for the reasoner (greedy decoding).")
    offline_reasoning_max_new_tokens: int = Field(
        96, ge=1, description="Token limit for the offline preset's small base-model reasoner."
    )
    offline_rerank_query_chars: int = Field(
        2000,
        ge=1,
        description="Characters of a query (and of a composed query's source caption and edit) the offline reranker "
        "reads; the rest is cut, so one long query cannot crowd out its candidates in the prompt.",
    )
    offline_rerank_candidate_chars: int = Field(
        1000, ge=1, description="Characters of a candidate's text the offline reranker reads; the rest is cut."
    )

    def backend(self, role: Literal["embedder", "reasoner", "reranker", "asr"]) -> str:
        chosen = getattr(self, role)
        return chosen if chosen is not None else PRESET_BACKENDS[self.preset][role]


class FrameSettings(Section):
    fps: float = Field(1.0, gt=0, description="Target sampling rate for gallery and reasoning frames.")
    max_frames: int = Field(
        128, ge=1, description="Frame cap for gallery and reasoning frames: R^3's 128 (Qwen3-VL-Embedding's own is 64)."
    )
    rerank_frames: int = Field(
        16, ge=1, description="Frame cap for the reranker's video inputs: R^3's 16 (Qwen3-VL-Reranker's own is 64)."
    )
    max_side: int = Field(
        448, ge=16, description="Longest side of a decoded frame, resized on decode (raised to keep min_decode_pixels)."
    )
    min_decode_pixels: int | None = Field(
        768 * 32 * 32,
        ge=4,
        description="Frames are decoded with at least this many pixels (never above the video's own size), so the "
        "Qwen3-VL resize (up to models.video_max_tokens x 32 x 32 px) never upsamples a downscaled decode; None "
        "lets max_side alone decide.",
    )
    fingerprint: FingerprintMode = Field(
        "content",
        description="How a video's cache key is made: `content` hashes its bytes; `stat` uses size + mtime + path "
        "(faster on huge galleries, blind to edits that keep both).",
    )


class GallerySettings(Section):
    uri: str | None = Field(
        None, description="LanceDB URI (a folder, or s3://bucket/prefix); None is `<home>/lancedb`."
    )
    name: str = Field(
        DEFAULT_GALLERY,
        description="Which gallery of the data home to index or query (`--gallery`); each is its own table "
        "`<prefix>_<name>_<embedder fingerprint>`, so indexing one never removes another's rows.",
    )
    table_prefix: str = Field(
        "gallery", description="Table names are `<prefix>_<gallery name>_<embedder fingerprint>`."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="LanceDB/object-store options (endpoint, region, credentials)."
    )
    roots: list[Path] = Field(
        default_factory=list,
        description="Folders a query's source video path may lie in; empty allows only gallery item ids.",
    )
    exact_search_max_bytes: int = Field(
        4 * 2**30,
        ge=0,
        description="Largest vector matrix (rows x dim x 4 bytes) a query batch loads into RAM for exact search. "
        "In RAM, exact search is a matrix product (LanceDB's flat search re-reads and decodes the whole vector "
        "column on every query, 10-18x slower at 100k rows); loading briefly needs about twice this. A bigger "
        "gallery is searched by LanceDB instead.",
    )
    use_ann_index: bool = Field(
        False,
        description="Search with the table's cosine vector index (approximate) when it has one and holds more "
        "than `ann_min_rows` rows; only for top-k searches, a score for every row is always exact. Off by "
        "default: exact search in RAM is as fast as the numpy floor up to the memory budget, while an index "
        "with LanceDB's default probes measured recall@50 0.16 on unclustered 1M x 384 vectors "
        "(benchmarks/RESULTS.md). Turn it on with `ann_nprobes` tuned for your data.",
    )
    ann_nprobes: int | None = Field(
        None, ge=1, description="IVF partitions probed per ANN query; None is LanceDB's default."
    )
    ann_ef: int | None = Field(None, ge=1, description="HNSW search breadth per ANN query; None is LanceDB's default.")
    ann_refine_factor: int | None = Field(
        None, ge=1, description="Re-rank refine_factor x limit ANN candidates with exact distances; None: no refine."
    )
    ann_min_rows: int = Field(
        100_000,
        ge=0,
        description="Rows above which a vector index, when present and `use_ann_index` is on, replaces exact search.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_gallery_name(value)


class IndexSettings(Section):
    result_expiration_s: float | None = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="How long an embedded batch stays reusable in the Prefect result store "
        "(`<home>/prefect-results`, Prefect's cache_expiration); older result files are deleted when an index "
        "run starts, so the store does not keep a second copy of every vector forever. The gallery table holds "
        "the vectors; an expired batch whose items are unchanged is never re-embedded (the plan skips it). "
        "None keeps them forever.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Items per embedding task (one Prefect task per batch). Frames are decoded one forward pass "
        "at a time inside a task, so this sets orchestration cost (task runs), not memory.",
    )
    max_batches_in_flight: int = Field(
        2,
        ge=1,
        description="Embedding tasks submitted ahead of the one being stored: bounds memory and threads when the "
        "embedder is slower than decoding (peak memory does not grow with the gallery).",
    )
    commit_seconds: float = Field(
        30.0,
        ge=0,
        description="Embedded rows are written to the table at least this often (and at the end): a crash loses at "
        "most this much work, while fewer commits mean fewer table versions and fragments.",
    )
    commit_max_rows: int = Field(4096, ge=1, description="Rows waiting to be written that force a commit.")
    video_extensions: list[str] = Field(
        default_factory=lambda: list(VIDEO_SUFFIXES),
        description="File suffixes a gallery folder scan treats as videos.",
    )
    retries: int = Field(2, ge=0, description="Retries for stages whose failures can be transient (I/O).")
    retry_delay_seconds: float = Field(2.0, ge=0, description="Delay between those retries.")
    task_runner: TaskRunnerName = Field("thread", description="Prefect task runner for the embedding stage.")
    dask_address: str | None = Field(None, description="Existing Dask scheduler address; None starts a local cluster.")
    dask_workers: int = Field(2, ge=1, description="Workers of the local Dask cluster.")


class R3Settings(BaseSettings):
    """Everything r3 can be told. Every field is documented; `r3 settings` prints them."""

    model_config = SettingsConfigDict(
        env_prefix="R3_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # `R3_QUERY__COPY_GATE_THRESHOLD=null` (or any optional field): back to None from the environment.
        env_parse_none_str="null",
    )

    home: Path = Field(
        default_factory=default_home,
        description="Data home: LanceDB gallery, caches, model copies, artifacts' files.",
    )
    models: ModelSettings = Field(default_factory=ModelSettings)
    frames: FrameSettings = Field(default_factory=FrameSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    gallery: GallerySettings = Field(default_factory=GallerySettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    data: DataSettings = Field(default_factory=DataSettings)
    upkeep: UpkeepSettings = Field(default_factory=UpkeepSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings ignores `toml_file` unless a TOML source is returned here.
        toml_path = Path(os.environ.get("R3_CONFIG", "r3.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        # Artifacts link files by URI and flows may run in another working directory: a relative home would break both.
        return home.expanduser().absolute()

    @model_validator(mode="after")
    def _apply_preset_defaults(self) -> R3Settings:
        # A preset's measured defaults apply only where the user set nothing (see PRESET_DEFAULTS).
        for section_name, values in PRESET_DEFAULTS.get(self.models.preset, {}).items():
            section = getattr(self, section_name)
            for name, value in values.items():
                if name not in section.model_fields_set:
                    # Validated as the field's type: a nested block (a dict here) becomes its settings model.
                    field = type(section).model_fields[name]
                    setattr(section, name, TypeAdapter(field.annotation).validate_python(value))
        return self

    @model_validator(mode="after")
    def _check_final_weights(self) -> R3Settings:
        q = self.query
        if q.final_embedding_weight + q.final_reranker_weight <= 0:
            raise ValueError("query.final_embedding_weight + query.final_reranker_weight must be > 0")
        return self

    # Derived locations under the one data home.
    @property
    def gallery_uri(self) -> str:
        return self.gallery.uri if self.gallery.uri else str(self.home / "lancedb")

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def settings_hash(self, *sections: str) -> str:
        """Stable short hash of the given sections (all when none), for cache keys and lineage."""
        dumped: dict[str, Any] = self.model_dump(mode="json")
        dumped.pop("home", None)
        if sections:
            dumped = {name: dumped[name] for name in sections}
        blob = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_settings(preset: str | None = None, home: Path | None = None, **overrides: Any) -> R3Settings:
    """Build the settings once, letting CLI flags win over environment and file."""
    init: dict[str, Any] = dict(overrides)
    if home is not None:
        init["home"] = home
    if preset is not None:
        # Sources merge deeply: the other model settings still come from environment and file.
        init["models"] = {**init.get("models", {}), "preset": preset}
    return R3Settings(**init)
