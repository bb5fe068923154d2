"""The playground at ``/``, driven in headless Chromium against a real ``quicksilver serve``.

Debian's chromium (``make install-dev`` installs it) is driven through Playwright; Playwright's own
browser download is never used.  Set QUICKSILVER_PLAYGROUND_SCREENSHOT=docs/img/playground.png to
save a screenshot taken mid-diffusion (how the docs' picture is made).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make install-dev")

PROMPT = "class Stack:\n    def __init__(self):\n        "
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Records every distinct state of the generated region, straight from the DOM, as the page paints it.
CANVAS_RECORDER = """
window.__canvas = [];
new MutationObserver(() => {
  const region = document.querySelector('#canvas .region');
  if (!region) return;
  const state = {masks: region.querySelectorAll('.tok.mask').length,
                 cells: region.querySelectorAll('.tok').length,
                 text: region.textContent};
  const last = window.__canvas[window.__canvas.length - 1];
  if (!last || last.text !== state.text || last.masks !== state.masks || last.cells !== state.cells)
    window.__canvas.push(state);
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""


def chromium_path() -> str | None:
    for candidate in (os.environ.get("QUICKSILVER_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed and could not be (make install-dev installs it with apt-get as root)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, cli_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors = []  # uncaught exceptions in the page's script fail the test
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.add_init_script(CANVAS_RECORDER)
    pg.goto(cli_server.url + "/")
    yield pg
    context.close()
    assert pg.errors == []


def settings(pg, max_tokens: int) -> None:
    pg.fill("#max-tokens", str(max_tokens))
    pg.fill("#block-length", "32")


def test_the_canvas_fills_in_as_drafts_stream(page, cli_server):
    pg = page
    # Without the key the server refuses, and the page says so instead of failing silently.
    pg.fill("#prompt", PROMPT)
    settings(pg, max_tokens=32)
    pg.click("#generate")
    pg.wait_for_selector("#status[data-state=error]", timeout=30_000)
    assert "401" in pg.inner_text("#error")

    pg.fill("#api-key", cli_server.api_key)
    pg.dispatch_event("#api-key", "change")  # stores the key and reloads the model list
    pg.wait_for_function("document.querySelector('#model-name').textContent === 'coder-tiny'", timeout=10_000)
    pg.evaluate("window.__canvas = []")
    pg.click("#generate")
    assert pg.get_attribute("#status", "data-state") == "generating"
    shot = os.environ.get("QUICKSILVER_PLAYGROUND_SCREENSHOT")
    if shot:
        pg.wait_for_function("(() => { const r = document.querySelector('#canvas .region'); if (!r) return false;"
                             " const m = r.querySelectorAll('.tok.mask').length, c = r.querySelectorAll('.tok').length;"
                             " return m > 4 && c - m > 12; })()", timeout=30_000)
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=shot)
    pg.wait_for_selector("#status[data-state=done]", timeout=60_000)
    assert pg.is_hidden("#error")

    states = pg.evaluate("window.__canvas")
    drafts = [s for s in states if s["cells"] > 0]
    assert drafts, "no draft frame was painted"
    assert drafts[0]["masks"] > 0, "the first draft should still have masked positions"
    masked = [s for s in drafts if s["masks"] > 0]
    assert len({(s["text"], s["masks"]) for s in masked}) >= 2, "the canvas never changed between drafts"
    assert min(s["masks"] for s in masked) < drafts[0]["masks"], "masked positions never filled in"

    steps = int(pg.inner_text("#steps-count"))
    tokens = int(pg.inner_text("#token-count"))
    assert steps > 0 and tokens > 0
    assert float(pg.inner_text("#tokens-per-second")) > 0
    assert pg.inner_text("#ttft").endswith("ms")

    # The canvas ends as exactly the text of the same request, not streamed (greedy decoding).
    final = pg.evaluate("document.querySelector('#canvas .region').textContent")
    body = cli_server.post("/v1/completions", {"model": "coder-tiny", "prompt": PROMPT,
                                               "max_tokens": 32, "block_length": 32, "temperature": 0})
    assert final == body["choices"][0]["text"]
    assert final.strip(), "the model generated nothing"


def test_stop_and_chat_mode(page, cli_server):
    pg = page
    pg.fill("#api-key", cli_server.api_key)
    pg.dispatch_event("#api-key", "change")
    # A long generation (coder-tiny commits about one token per step): Stop lands while it runs, and
    # the server serves on.
    settings(pg, max_tokens=512)
    pg.click("#generate")
    pg.wait_for_function("document.querySelectorAll('#canvas .region .tok').length > 0", timeout=30_000)
    pg.click("#stop")
    pg.wait_for_selector("#status[data-state=stopped]", timeout=10_000)
    assert pg.is_enabled("#generate") and pg.is_disabled("#stop")

    pg.select_option("#mode", "chat")
    assert pg.is_disabled("#suffix")  # fill-in-the-middle is a completion-mode feature
    pg.fill("#prompt", "Write a function that adds two numbers.")
    settings(pg, max_tokens=16)
    pg.click("#generate")
    pg.wait_for_selector("#status[data-state=done]", timeout=60_000)
    assert pg.is_hidden("#error")
    assert int(pg.inner_text("#steps-count")) > 0
    # Chat output has no prompt echoed into the canvas.
    assert pg.locator("#canvas .prompt").count() == 0


def test_edit_tab_regenerates_lines_and_schema_box_gives_valid_json(page, cli_server):
    import json

    import jsonschema

    pg = page
    pg.fill("#api-key", cli_server.api_key)
    pg.dispatch_event("#api-key", "change")
    pg.wait_for_function("document.querySelector('#model-name').textContent === 'coder-tiny'", timeout=10_000)
    # Edit: line 2 is regenerated while drafts stream; lines 1 and 3 come back byte for byte.
    pg.select_option("#mode", "edit")
    assert pg.is_visible("#edit-lines") and pg.is_disabled("#schema")
    document = "def add(a, b):\n    return a + b\nprint(add(1, 2))\n"
    pg.fill("#prompt", document)
    pg.fill("#edit-lines", "2:2")
    settings(pg, max_tokens=8)
    pg.evaluate("window.__canvas = []")
    pg.click("#generate")
    pg.wait_for_selector("#status[data-state=done]", timeout=60_000)
    assert pg.is_hidden("#error")
    assert any(s["masks"] > 0 for s in pg.evaluate("window.__canvas")), "no draft with masked lines was shown"
    final = pg.evaluate("document.querySelector('#canvas .region').textContent")
    assert final.startswith("def add(a, b):\n") and final.endswith("\nprint(add(1, 2))\n")
    pg.fill("#edit-lines", "7:9")
    pg.click("#generate")
    pg.wait_for_selector("#error:not([hidden])", timeout=10_000)  # refused in the page, nothing sent
    assert "outside the text" in pg.inner_text("#error")

    # Schema box: the completion is JSON valid against it.
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "size": {"type": "integer"},
                                               "ok": {"type": "boolean"}}, "required": ["name"]}
    pg.select_option("#mode", "completion")
    pg.fill("#prompt", "config = ")
    pg.evaluate("document.querySelector('#schema-box').open = true")
    pg.fill("#schema", json.dumps(schema))
    pg.click("#generate")
    pg.wait_for_selector("#status[data-state=done]", timeout=60_000)
    assert pg.is_hidden("#error")
    final = pg.evaluate("document.querySelector('#canvas .region').textContent")
    jsonschema.validate(json.loads(final), schema)
    pg.fill("#schema", '{"type": "string", "pattern": "x"}')
    pg.click("#generate")
    pg.wait_for_selector("#status[data-state=error]", timeout=10_000)
    assert "unsupported keyword 'pattern'" in pg.inner_text("#error")
    pg.fill("#schema", "")  # the stored settings of the next test start clean
