"""What the library logs reaches a flow run's logs on the Prefect server, where the UI shows them."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from flows.common import route_library_logs
from flows.index_flow import index_gallery
from flows.query_flow import query_batch
from r3tasks.models.registry import register_backend
from tests.test_query_isolation import MODELS, POISON, QUERIES, write_jsonl
from tests.test_reliability import write_caption_gallery

pytestmark = pytest.mark.usefixtures("prefect_harness")

register_backend("reasoner", "faulty-memory", "tests.test_query_isolation:load_faulty_memory_reasoner")


async def _run_log_lines(flow_run_id) -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [(log.name, log.message) for log in logs]


def test_a_library_warning_shows_in_the_query_runs_logs(tmp_path: Path, r3_home: Path) -> None:
    from prefect.logging.handlers import APILogHandler

    index_gallery(source=str(write_caption_gallery(tmp_path / "g")), home=str(r3_home), overrides={"models": MODELS})
    # The reasoner fails the whole batch on the poisoned edit: r3tasks.query.isolation logs that it retries
    # each query alone, and only the poisoned query ends in an error.
    queries = write_jsonl(tmp_path / "q.jsonl", [QUERIES[0], POISON])
    state = query_batch(
        queries=str(queries),
        out=str(tmp_path / "out.json"),
        home=str(r3_home),
        overrides={"models": {**MODELS, "reasoner": "faulty-memory"}, "query": {"use_reasoning": True}},
        return_state=True,
    )
    assert state.is_completed()
    results = {r["id"]: r["error"] for r in json.loads((tmp_path / "out.json").read_text())["results"]}
    assert results[QUERIES[0]["id"]] is None and results[POISON["id"]].startswith("reasoning failed")
    APILogHandler().flush()  # sends what the run logged and waits until the server took it
    lines = asyncio.run(_run_log_lines(state.state_details.flow_run_id))
    library = [message for name, message in lines if name == "r3tasks.query.isolation"]
    assert len(library) == 1 and "a batch of 2 failed" in library[0], lines


def test_routing_extends_the_extra_loggers_a_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_LOGGING_EXTRA_LOGGERS", "mylib")
    route_library_logs()
    route_library_logs()  # idempotent: one handler, one name
    import os

    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == "mylib,r3tasks"
    handlers = logging.getLogger("r3tasks").handlers
    assert len(handlers) == len(set(map(id, handlers)))
