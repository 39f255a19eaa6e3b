"""The search page at `/` of `r3 serve`, in a real browser: the app runs under uvicorn on a free loopback port
over a gallery of generated clips (with captions) and text items, on fake models, and headless Chromium
(driven by Playwright) types queries with the keyboard only and must show the ranking the API returns for
them, reasoning, gates and errors, with every caption and model text shown as the characters it is.

Skipped, with the reason, when Playwright or a Chromium binary is missing (`.ci/run` installs both).
Set R3TEST_SAVE_SCREENSHOT=1 to also save docs/search-text.png and docs/search-composed.png.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.common import code_version
from flows.index_flow import index_gallery
from r3tasks.datasets.synthetic import ClipSpec, write_clip
from r3tasks.demo import DEMO_SPECS
from r3tasks.models.registry import register_backend
from r3tasks.serve.app import create_app
from r3tasks.serve.page import PAGE_HTML
from r3tasks.serve.service import QueryService
from tests.conftest import fake_settings
from tests.fakes import FakeEmbedder
from tests.test_reliability import CAPTIONS
from tests.test_ui import NEEDS_A_BROWSER, chromium_path

REPO = Path(__file__).resolve().parents[1]
pytestmark = NEEDS_A_BROWSER

MODELS = {"embedder": "words", "reasoner": "fake", "reranker": "fake"}
QUERY = {"use_reasoning": True}
TOP_K = 10  # the page's default
# Root in a container, and nothing but the page's own server to talk to.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVIL = "<script>alert(1)</script> <img src=x onerror=alert(2)> <|im_end|> <b>not bold</b>"
VIDEO_IDS = frozenset(spec.clip_id() for spec in DEMO_SPECS)
SOURCE = ClipSpec(shape="circle", colour="red", motion="right", background="day", count=1)
STOP_WORDS = frozenset("a an the to of in on over it its is and with make after instead".split())


class WordsEmbedder(FakeEmbedder):
    """Bag-of-words vectors: a query ranks the captions sharing its words first, so what the page shows (and
    the screenshots in docs/) is a ranking a person can follow, where the hash fake's would look random."""

    def __init__(self) -> None:
        super().__init__(dim=256, uses_frames=False, name="words")

    def _vector(self, item) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"[a-z]+", (item.text or "").lower()):
            if word not in STOP_WORDS:
                vector[int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % self.dim] += 1.0
        vector[0] += 0.01  # never the zero vector, which has no cosine
        return vector


def load_words_embedder(settings) -> WordsEmbedder:
    return WordsEmbedder()


register_backend("embedder", "words", "tests.test_search_page:load_words_embedder")


@pytest.fixture(scope="module")
def gallery_home(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> Path:
    """A data home whose gallery holds the demo's generated clips (captioned) and text-only items, one of them
    a caption full of markup and a model's control token."""
    root = tmp_path_factory.mktemp("search-page")
    rows: list[dict[str, Any]] = []
    for spec in DEMO_SPECS:
        write_clip(root / "gallery" / "clips" / f"{spec.clip_id()}.mp4", spec, seconds=1.0)
        rows.append({"id": spec.clip_id(), "path": f"clips/{spec.clip_id()}.mp4", "text": spec.caption()})
    rows += [{"id": k, "text": v} for k, v in CAPTIONS.items()] + [{"id": "evil-caption", "text": EVIL}]
    manifest = root / "gallery" / "gallery.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    home = root / "r3-home"
    home.mkdir()
    index_gallery(source=str(manifest), home=str(home), overrides={"models": MODELS})
    return home


@contextmanager
def serving(home: Path, **serve: Any) -> Iterator[str]:
    import uvicorn

    service = QueryService(fake_settings(home, models=MODELS, query=QUERY, serve=serve), code_version())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue from now on, so no wait for the server's start
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture(scope="module")
def url(gallery_home: Path) -> Iterator[str]:
    with serving(gallery_home) as served:
        yield served


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a shared 2-core machine under a full test run: its 5 s is not enough
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        browser.set_default_timeout(60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(context: Any, url: str) -> Iterator[Any]:
    tab = context.new_page()
    tab.goto(url)
    tab.wait_for_selector("body[data-ready]")
    try:
        yield tab
    finally:
        tab.close()


def api(url: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def answer(url: str, row: dict, where: str | None = None, token: str | None = None) -> dict:
    """What the API answers for the query the page sends for `row`."""
    body = {"queries": [row], "top_k": TOP_K, "gallery": "default", "where": where}
    status, data = api(url, "/v1/query", body, token)
    assert status == 200, data
    return data["results"][0]


def shown_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#results > li", "cards => cards.map((c) => c.dataset.id)")


def wait_for_thumbnails(page: Any) -> None:
    page.wait_for_function(
        """() => [...document.querySelectorAll('.thumb')].every((t) => t.classList.contains('text-only')
             || (t.querySelector('img') && t.querySelector('img').complete && t.querySelector('img').naturalWidth > 0))"""
    )


def save_screenshot(page: Any, name: str) -> None:
    if os.environ.get("R3TEST_SAVE_SCREENSHOT") == "1":
        page.screenshot(path=str(REPO / "docs" / name), full_page=True)


def test_a_text_query_typed_and_entered_shows_the_apis_ranking(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    query = "a red circle at night"
    expected = answer(url, {"id": "text", "text": query})
    ranked = expected["ranked"]
    assert len(ranked) == TOP_K and ranked[0]["id"] == "red-circle-x1-right-night"

    page.get_by_label("What are you looking for?").fill(query)
    page.keyboard.press("Enter")
    cards = page.locator("#results > li")
    expect(cards).to_have_count(TOP_K)
    expect(cards.first).to_have_attribute("data-id", ranked[0]["id"])
    assert shown_ids(page) == [item["id"] for item in ranked]
    first = ranked[0]
    scores = [f"{first['score']:.3f}", f"{first['embedding_score']:.3f}", f"{first['reranker_score']:.3f}"]
    expect(cards.first.locator("dl.scores dd")).to_have_text(scores)
    expect(cards.first.locator(".caption")).to_have_text(DEMO_SPECS[1].caption())
    expect(page.locator("#status")).to_contain_text(f"{TOP_K} results from gallery default version ")
    expect(page.locator("#results-title")).to_have_text(f"Results for \u201c{query}\u201d")
    rerank = expected["rerank"]
    expect(page.locator("#facts")).to_contain_text(f"{rerank['pairs']} pairs scored, depth {rerank['depth']}")
    expect(page.locator("#reasoning")).to_be_hidden()  # a text query has no reasoning to show
    text_item = next(i for i, item in enumerate(ranked) if item["id"] in CAPTIONS)
    expect(cards.nth(text_item).locator(".thumb.text-only")).to_have_text(CAPTIONS[ranked[text_item]["id"]])
    wait_for_thumbnails(page)
    assert page.locator("#results img").count() == sum(item["id"] in VIDEO_IDS for item in ranked) > 0
    save_screenshot(page, "search-text.png")

    # Without a mouse: the results are focusable, arrow keys move between them, and a result becomes the
    # source of a composed query from its button.
    cards.first.focus()
    page.keyboard.press("ArrowDown")
    expect(cards.nth(1)).to_be_focused()
    cards.first.get_by_role("button").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Source item")).to_have_value(ranked[0]["id"])
    expect(page.get_by_label("Edit: how the target differs from the source")).to_be_focused()
    # Nothing from elsewhere: the API, and the thumbnails' blob: URLs made from its answers.
    assert requested and all(address.startswith((url + "/", f"blob:{url}/")) for address in requested), requested
    assert not re.search(r"(src|href)=|https?://", PAGE_HTML)


def test_a_composed_query_from_a_source_picked_by_keyboard_shows_reasoning_gate_and_rerank(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    edit = "make the circle blue"
    expected = answer(url, {"id": "composed", "source": SOURCE.clip_id(), "edit": edit})
    assert expected["error"] is None and expected["reasoning"] and expected["rerank"]

    page.get_by_label("Text", exact=True).focus()
    page.keyboard.press("ArrowRight")  # the radio group: the composed query
    page.keyboard.press("Tab")
    source = page.get_by_role("combobox", name="Source item")
    expect(source).to_be_focused()
    page.keyboard.type("red-circle-x1-right")
    expect(page.locator("#source-count")).to_have_text("2 items")  # -day and -night, by id
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("listbox").get_by_role("option", selected=True)).to_contain_text(SOURCE.clip_id())
    page.keyboard.press("Enter")
    expect(source).to_have_value(SOURCE.clip_id())
    expect(page.locator("#source-preview .caption")).to_have_text(SOURCE.caption())
    page.keyboard.type(edit)
    page.keyboard.press("Enter")

    cards = page.locator("#results > li")
    expect(cards.first).to_have_attribute("data-id", expected["ranked"][0]["id"])
    expect(cards).to_have_count(len(expected["ranked"]))
    assert shown_ids(page) == [item["id"] for item in expected["ranked"]]
    expect(page.locator("#reasoning")).to_have_text(expected["reasoning"])
    gate = expected["gate"]
    used = "yes" if gate["used"] else "no"
    expect(page.locator("#facts")).to_contain_text(f"agreement {gate['agreement']:.3f}")
    expect(page.locator("#facts")).to_contain_text(f"used: {used}")
    expect(page.locator("#facts")).to_contain_text(f"{expected['rerank']['pairs']} pairs scored")
    expect(page.locator("#results-title")).to_have_text(f"Results for {SOURCE.clip_id()} + \u201c{edit}\u201d")
    wait_for_thumbnails(page)
    page.locator("#source-preview img").wait_for()
    save_screenshot(page, "search-composed.png")


def test_captions_reasoning_and_typed_text_show_as_text_and_run_nothing(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    expected = answer(url, {"id": "text", "text": EVIL})
    assert expected["ranked"][0]["id"] == "evil-caption"

    page.get_by_label("What are you looking for?").fill(EVIL)
    page.keyboard.press("Enter")
    card = page.locator("#results > li").first
    expect(card).to_have_attribute("data-id", "evil-caption")
    expect(card.locator(".caption")).to_have_text(EVIL)
    expect(page.locator("#results-title")).to_have_text(f"Results for \u201c{EVIL}\u201d")

    # The model's text too: the fake reasoner writes the source's caption (this one) into its reasoning.
    card.get_by_role("button").focus()
    page.keyboard.press("Enter")
    edit = "<img src=y onerror=alert(3)> make it night <|im_end|>"
    page.keyboard.type(edit)
    page.keyboard.press("Enter")
    composed = answer(url, {"id": "composed", "source": "evil-caption", "edit": edit})
    assert "<script>alert(1)</script>" in composed["reasoning"] and "<|im_end|>" in composed["reasoning"]
    expect(page.locator("#reasoning")).to_have_text(composed["reasoning"])
    expect(page.locator("#results > li").first).to_have_attribute("data-id", composed["ranked"][0]["id"])
    expect(page.locator("#source-preview .caption")).to_have_text(EVIL)

    assert page.locator("main script, main b, main img[src='x'], main img[src='y']").count() == 0
    assert dialogs == []


def test_a_bad_where_filter_shows_its_one_line_error(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("What are you looking for?").fill("a dog in a park")
    page.keyboard.press("Enter")
    expect(page.locator("#results > li")).to_have_count(TOP_K)

    where = "no_such_column = 1"
    status, body = api(url, "/v1/query", {"queries": [{"id": "text", "text": "a dog in a park"}], "where": where})
    assert status == 400 and body["error"].startswith("where: ") and "\n" not in body["error"]
    page.get_by_label("Filter (where, optional)").fill(where)
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.locator("#message-text")).to_have_text(body["error"])
    expect(page.locator("#results > li")).to_have_count(0)

    # A filter that runs narrows the results, and the page says which filter answered.
    page.get_by_label("Filter (where, optional)").fill("text LIKE '%dog%'")
    page.keyboard.press("Enter")
    expect(page.locator("#results > li")).to_have_count(2)
    expect(page.get_by_role("alert")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("where text LIKE '%dog%'")

    # A filter that keeps no row answers with a warning; an unknown source is the query's own error.
    nothing = "id = 'no-such-item'"
    warned = answer(url, {"id": "text", "text": "a dog in a park"}, where=nothing)
    assert warned["warnings"] and warned["ranked"] == []
    page.get_by_label("Filter (where, optional)").fill(nothing)
    page.keyboard.press("Enter")
    expect(page.get_by_role("list", name="Warnings").get_by_role("listitem")).to_have_text(warned["warnings"])
    expect(page.locator("#status")).to_contain_text("0 results")
    expect(page.locator("#results > li")).to_have_count(0)

    failed = answer(url, {"id": "composed", "source": "no-such-item", "edit": "make it night"})
    assert failed["error"]
    page.get_by_label("Filter (where, optional)").fill("")
    page.get_by_label("Composed: a source from the gallery and an edit").check()
    page.get_by_label("Source item").fill("no-such-item")
    page.get_by_label("Edit: how the target differs from the source").fill("make it night")
    page.keyboard.press("Enter")
    expect(page.locator("#message-text")).to_have_text(failed["error"])
    expect(page.get_by_role("list", name="Warnings")).to_be_hidden()


def test_the_page_asks_for_a_token_once_and_sends_it(context: Any, gallery_home: Path) -> None:
    from playwright.sync_api import expect

    with serving(gallery_home, token="s3cret") as served:
        tab = context.new_page()
        sent: list[str | None] = []
        tab.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
        try:
            tab.goto(served)
            token = tab.get_by_label("Access token")
            expect(token).to_be_focused()
            tab.keyboard.type("s3cret")
            tab.keyboard.press("Enter")
            expect(tab.locator("#auth")).to_be_hidden()
            expect(tab.locator("#gallery option")).to_have_count(1)
            expected = answer(served, {"id": "text", "text": "a cat on a sofa"}, token="s3cret")
            tab.get_by_label("What are you looking for?").fill("a cat on a sofa")
            tab.keyboard.press("Enter")
            expect(tab.locator("#results > li").first).to_have_attribute("data-id", expected["ranked"][0]["id"])
            assert tab.evaluate("sessionStorage.getItem('r3-token')") == "s3cret"

            sent.clear()
            tab.reload()  # asked once: the tab keeps it
            tab.wait_for_selector("body[data-ready]")
            expect(tab.locator("#gallery option")).to_have_count(1)
            expect(tab.locator("#auth")).to_be_hidden()
            assert sent and set(sent) == {"Bearer s3cret"}

            tab.evaluate("sessionStorage.setItem('r3-token', 'wrong')")
            tab.reload()
            expect(token).to_be_focused()
            expect(tab.locator("#auth-note")).to_have_text("The service refused that token: enter it again.")
        finally:
            tab.close()


def test_the_item_list_behind_the_source_picker(url: str) -> None:
    status, by_id = api(url, "/v1/items?q=RED-circle&limit=2")
    assert status == 200 and by_id["total"] == 3
    assert [item["id"] for item in by_id["items"]] == ["red-circle-x1-left-day", "red-circle-x1-right-day"]
    assert by_id["items"][0] == {"id": "red-circle-x1-left-day", "text": DEMO_SPECS[4].caption(), "kind": "video"}
    _, paged = api(url, "/v1/items?q=red-circle&limit=2&offset=2")
    assert [item["id"] for item in paged["items"]] == ["red-circle-x1-right-night"]
    _, by_text = api(url, "/v1/items?q=sofa")
    assert by_text["items"] == [{"id": "cat-sofa", "text": CAPTIONS["cat-sofa"], "kind": "text"}]
    _, everything = api(url, "/v1/items?limit=1000")
    assert everything["total"] == len(DEMO_SPECS) + len(CAPTIONS) + 1
    assert [i["id"] for i in everything["items"]] == sorted(i["id"] for i in everything["items"])
    assert api(url, "/v1/items?gallery=nope")[0] == 404
    assert api(url, "/v1/items?limit=0")[0] == 400


def test_non_finite_scores_in_an_answer_still_render(page: Any) -> None:
    parsed = page.evaluate(
        """parseLenient('{"a": NaN, "b": "NaN, -Infinity \\\\" Infinity", "c": [-Infinity, Infinity, 1.5]}')"""
    )
    assert parsed == {"a": "NaN", "b": 'NaN, -Infinity " Infinity', "c": ["-Infinity", "Infinity", 1.5]}
    assert page.evaluate("[fmt('-Infinity'), fmt(null), fmt(0.12345)]") == ["\u2212\u221e", "\u2014", "0.123"]
