"""The one-time Gemma conversion as a first-time user meets it: it says what it does and about how long
before it starts, says when it is done, and leaves files the user's umask allows others to read.

The package and the dequantisation are stood in for (the real conversion is tested on real weights in
test_offline_models.py); what is checked here is the wrapper around them: logs, modes, the marker.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

import r3tasks.models.gemma3.convert as convert
from r3tasks.settings.tree import load_settings


@pytest.fixture
def fake_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def assemble(path: Path) -> str:
        Path(path).write_bytes(b"GGUF" + b"\0" * 64)
        return str(path)

    package = SimpleNamespace(EXPECTED_SHA256="ab" * 32, MODEL_NAME="gemma.gguf", assemble=assemble)
    monkeypatch.setattr(convert, "_package", lambda: package)

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        # What the real one leaves: safetensors weights (written 0600 by safetensors) and tokenizer files.
        import torch
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(out_dir / "model.safetensors"))
        (out_dir / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(convert, "convert_gguf", fake_convert)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_conversion_announces_itself_and_writes_with_the_users_umask(
    tmp_path: Path, fake_package: None, caplog: pytest.LogCaptureFixture, umask: int
) -> None:
    settings = load_settings(home=tmp_path / "home", preset="offline")
    old = os.umask(umask)
    try:
        with caplog.at_level(logging.INFO, logger="r3tasks"):
            target = convert.ensure_converted(settings)
    finally:
        os.umask(old)

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("r3tasks")]
    assert len(messages) == 2, messages
    assert "converting" in messages[0] and convert.CONVERSION_ESTIMATE in messages[0] and str(target) in messages[0]
    assert "done in" in messages[1] and " s" in messages[1]
    assert convert.is_converted(target)
    assert _mode(target) == 0o777 & ~umask
    for name in ("model.safetensors", "tokenizer.json", convert.MARKER):
        assert _mode(target / name) == 0o666 & ~umask, name

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="r3tasks"):
        assert convert.ensure_converted(settings) == target
    assert not [r for r in caplog.records if r.name.startswith("r3tasks")]  # later runs load it silently
