"""Shared fixtures: an isolated Prefect home and test server for the session, fake backends, data homes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from r3tasks.models.registry import clear_loaded_models, register_backend
from r3tasks.settings.tree import R3Settings, load_settings

# Before anything imports prefect: keep its home and telemetry out of the user's.
_PREFECT_HOME = Path(os.environ.get("R3_TEST_PREFECT_HOME", f"/tmp/r3-test-prefect-home-{os.getpid()}"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Tiny models on a shared 2-core box: one spinning OpenMP thread is 10-40x faster than two.
os.environ.setdefault("OMP_NUM_THREADS", "1")
for _name in [n for n in os.environ if n.startswith("R3_")]:
    # The user's own R3_* settings must not leak into tests.
    del os.environ[_name]
# No Whisper weights on a test machine, and no hub: speech recognition runs only where a test asks for it.
os.environ["R3_MODELS__ASR"] = "none"

register_backend("embedder", "fake", "tests.fakes:load_fake_embedder")
register_backend("embedder", "fake-text", "tests.fakes:load_fake_text_embedder")
register_backend("reasoner", "fake", "tests.fakes:load_fake_reasoner")
register_backend("reasoner", "fake-copying", "tests.fakes:load_fake_copying_reasoner")
register_backend("reranker", "fake", "tests.fakes:load_fake_reranker")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session: it takes 10-15 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def r3_home(tmp_path: Path) -> Path:
    home = tmp_path / "r3-home"
    home.mkdir()
    return home


@pytest.fixture(autouse=True)
def _fresh_models():
    clear_loaded_models()
    yield
    clear_loaded_models()


def fake_settings(home: Path, **overrides) -> R3Settings:
    models = {"embedder": "fake", **overrides.pop("models", {})}
    return load_settings(home=home, models=models, **overrides)


@pytest.fixture(scope="session")
def converted_gemma_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data home whose models folder holds Gemma 3 270M converted once for the session (about 40 s on a
    2-core CPU). Tests of the conversion itself make their own."""
    from r3tasks.models.gemma3.convert import ensure_converted

    home = tmp_path_factory.mktemp("converted-gemma-home")
    ensure_converted(load_settings(home=home, preset="offline", models={"device": "cpu"}))
    return home
