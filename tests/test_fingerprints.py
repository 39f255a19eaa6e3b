"""A gallery's table is named by its embedder's fingerprint, computed without loading the embedder: the name is
the one the loaded embedder gives (offline MiniLM, tiny Qwen3-VL), and opening or pinning a gallery loads no
model (a one-shot `r3 query` loads the embedder once, to embed its queries)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r3tasks.gallery.views import open_store
from r3tasks.models.registry import embedder_dim, embedder_fingerprint, shared_embedder
from r3tasks.settings.tree import R3Settings, load_settings
from tests.conftest import fake_settings

REPO = Path(__file__).resolve().parents[1]


def _offline(home: Path) -> R3Settings:
    return load_settings(home=home, preset="offline", models={"device": "cpu"})


def _tiny(home: Path, **models: object) -> R3Settings:
    return load_settings(home=home, models={"preset": "tiny", "device": "cpu", **models})


@pytest.mark.parametrize(
    "make",
    [_offline, _tiny, lambda home: _tiny(home, embedding_dim=8)],
    ids=["offline-minilm", "tiny-qwen3vl", "tiny-qwen3vl-mrl"],
)
def test_the_fingerprint_and_size_known_without_the_model_are_the_loaded_embedders(r3_home: Path, make) -> None:
    settings = make(r3_home)
    named = (embedder_fingerprint(settings), embedder_dim(settings))
    loaded = shared_embedder(settings)
    assert named == (loaded.fingerprint, loaded.dim)
    store = open_store(settings)
    assert (store.embedder_fingerprint, store.dim) == named
    assert store.name == f"{settings.gallery.table_prefix}_default_{loaded.fingerprint[:16]}"


def test_a_backend_without_its_own_fingerprint_function_is_loaded_and_asked(r3_home: Path) -> None:
    settings = fake_settings(r3_home)  # tests.fakes: registered from outside, no embedder_fingerprint there
    assert (embedder_fingerprint(settings), embedder_dim(settings)) == (
        shared_embedder(settings).fingerprint,
        shared_embedder(settings).dim,
    )


# In a fresh interpreter: whether torch or transformers were ever imported is the proof that no model loaded.
_PIN_WITHOUT_A_MODEL = """
import json, sys
from pathlib import Path
import numpy as np
from r3tasks.gallery.pinned import pin
from r3tasks.gallery.table import GalleryRow
from r3tasks.gallery.views import open_store, pinned
from r3tasks.settings.tree import load_settings

settings = load_settings(home=Path(sys.argv[1]), preset="offline", models={"device": "cpu"})
store = open_store(settings)
vectors = np.eye(store.dim, dtype=np.float32)[:3]
store.upsert([GalleryRow(f"item-{i}", None, f"caption {i}", None, f"k{i}", None, v) for i, v in enumerate(vectors)])
view = pinned(settings, None)
print(json.dumps({
    "table": store.name,
    "rows": len(view.records),
    "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules),
}))
"""


def test_opening_and_pinning_a_gallery_loads_no_model(r3_home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PIN_WITHOUT_A_MODEL, str(r3_home)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == [] and seen["rows"] == 3
    assert seen["table"] == open_store(_offline(r3_home)).name
