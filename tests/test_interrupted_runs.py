"""A run stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler, `timeout`) says so in one line, exits 128 + the
signal, leaves no half-written results file and no temporary Prefect server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.index_flow import index_gallery
from tests.test_reliability import CAPTIONS, FAKE_QUERY_MODELS, REPO, write_caption_gallery, write_queries

pytestmark = pytest.mark.usefixtures("prefect_harness")

# The query embedder announces that the flow is inside its embedding task, then waits to be stopped there.
STUCK_QUERY_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from r3tasks.models.registry import register_backend
    import tests.fakes as fakes

    queries, out, marker, home = sys.argv[1:5]

    class StuckEmbedder(fakes.FakeEmbedder):
        def embed_queries(self, items, instruction):
            Path(marker).write_text("embedding")
            threading.Event().wait()

    fakes.load_stuck = lambda settings: StuckEmbedder(uses_frames=False)
    register_backend("embedder", "stuck", "tests.fakes:load_stuck")
    register_backend("reasoner", "fake", "tests.fakes:load_fake_reasoner")
    register_backend("reranker", "fake", "tests.fakes:load_fake_reranker")
    from flows.cli import run
    sys.argv = ["r3", "query", queries, "--out", out, "--home", home]
    run()
    """
)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_query_run_says_so_and_writes_nothing(
    tmp_path: Path, r3_home: Path, signum: int, code: int
) -> None:
    # The stuck embedder must give the same fingerprint as the one the gallery was indexed with.
    index_gallery(
        source=str(write_caption_gallery(tmp_path / "g")), home=str(r3_home), overrides={"models": FAKE_QUERY_MODELS}
    )
    queries = write_queries(tmp_path / "q.jsonl", [{"id": "t", "text": CAPTIONS["cat-sofa"]}])
    out, marker = tmp_path / "results.json", tmp_path / "embedding-started"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "R3_MODELS__EMBEDDER": "stuck",
        "R3_MODELS__REASONER": "fake",
        "R3_MODELS__RERANKER": "fake",
    }
    env.pop("PREFECT_API_URL", None)  # its own temporary server, as a user's one-shot command
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("w") as stderr:  # a file, not a pipe: a pipe nobody reads fills and blocks the run
        child = subprocess.Popen(
            [sys.executable, "-c", STUCK_QUERY_SCRIPT, str(queries), str(out), str(marker), str(r3_home)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # A shell's background job ignores SIGINT and its children inherit that: a user's terminal does not.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            while not marker.exists():
                try:
                    child.wait(timeout=0.2)  # returns early only if the child died
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"the run ended before embedding: {stderr_file.read_text()[-3000:]}")
            child.send_signal(signum)
            child.wait(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    err = stderr_file.read_text()
    assert child.returncode == code, err[-3000:]
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == (
        f"r3 query: interrupted by {name}; nothing half-written (a results file is whole or absent)"
    )
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".results.json.partial-*"))
