"""The service's search page (`GET /`): one self-contained HTML file that calls the JSON API from the browser.

Kept as strings in a module so it ships with the package however it is installed, and needs no build step
and nothing from outside the service (no CDN: a service may run where there is no internet). Everything a
user typed, the gallery stores or a model wrote is shown with `textContent` only, never parsed as markup;
the page's Content-Security-Policy backs that up by letting only its own script (by hash) run.
"""

from __future__ import annotations

import base64
import hashlib

from r3tasks.serve.page_script import SCRIPT

STYLE = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #dadce0; --soft: #f5f7fa; --accent: #1a56db;
  --focus: #e37400; --err: #b3261e; --warn: #7a4f00; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
header { display: flex; align-items: baseline; gap: 1rem; padding: .7rem 1.5rem; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.15rem; margin: 0; }
header p, .hint { color: var(--muted); margin: 0; font-size: .85rem; }
main { max-width: 76rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
form { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 1rem; display: grid; gap: .8rem; }
#auth { border-color: var(--focus); margin-bottom: 1rem; }
fieldset.modes { border: 0; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: .4rem 1.4rem; }
fieldset.modes legend { font-weight: 600; padding: 0; margin-bottom: .3rem; float: left; width: 100%; }
fieldset.modes label { font-weight: normal; display: inline-flex; gap: .35rem; align-items: center; }
label { font-weight: 600; display: block; margin-bottom: .2rem; }
input[type=text], input[type=search], input[type=password], input[type=number], select {
  font: inherit; padding: .45rem .6rem; border: 1px solid #80868b; border-radius: 6px; background: #fff; width: 100%; }
.row { display: grid; grid-template-columns: minmax(10rem, 16rem) 9rem 1fr; gap: .8rem; }
.composed { display: grid; grid-template-columns: 1fr 1fr; gap: .8rem; }
@media (max-width: 46rem) { .row, .composed { grid-template-columns: 1fr; } }
button { font: inherit; padding: .45rem 1.2rem; border-radius: 6px; border: 1px solid var(--accent);
  background: var(--accent); color: #fff; cursor: pointer; }
button.use { background: #fff; color: var(--accent); padding: .15rem .6rem; font-size: .82rem; align-self: flex-start; }
.actions { display: flex; gap: 1rem; align-items: center; }
:focus-visible, .hit:focus { outline: 3px solid var(--focus); outline-offset: 2px; }
.combo { position: relative; }
#source-list { position: absolute; z-index: 2; left: 0; right: 0; top: 100%; margin: 2px 0 0; padding: 0;
  list-style: none; background: #fff; border: 1px solid var(--line); border-radius: 6px;
  box-shadow: 0 4px 16px rgba(0, 0, 0, .15); max-height: 20rem; overflow: auto; }
#source-list li { padding: .35rem .6rem; display: flex; gap: .7rem; cursor: pointer; }
#source-list li[aria-selected=true] { background: #e8f0fe; outline: 2px solid var(--accent); outline-offset: -2px; }
.option-id, .hit-id, code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85rem; }
.option-id { white-space: nowrap; }
.option-text { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.preview { display: flex; gap: .8rem; align-items: center; margin-top: .5rem; }
.preview .thumb { width: 112px; flex: none; }
.preview .caption { color: var(--muted); }
#message { border-left: 4px solid var(--err); background: #fdecea; color: var(--err); padding: .6rem .8rem; margin: 1rem 0 0; }
#warnings { border-left: 4px solid #f9ab00; background: #fef7e0; color: var(--warn); padding: .5rem .8rem .5rem 2rem; margin: 1rem 0 0; }
#status { color: var(--muted); margin: 1rem 0 .5rem; min-height: 1.4em; }
#info { border: 1px solid var(--line); border-radius: 8px; padding: .7rem 1rem; margin: .5rem 0 1rem; }
#info h2, #results-title { font-size: 1rem; margin: 0 0 .4rem; }
#reasoning { white-space: pre-wrap; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .9rem; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
#results { list-style: none; padding: 0; margin: 0; display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); }
.hit { border: 1px solid var(--line); border-radius: 8px; padding: .6rem; display: flex; flex-direction: column; gap: .35rem; }
.thumb { aspect-ratio: 4 / 3; background: #202124; border-radius: 6px; overflow: hidden; display: flex;
  align-items: center; justify-content: center; color: #e8eaed; font-size: .8rem; }
.thumb img { width: 100%; height: 100%; object-fit: cover; display: block; }
.thumb.text-only { background: var(--soft); border: 1px dashed #bdc1c6; color: var(--fg); align-items: flex-start;
  justify-content: flex-start; padding: .6rem; overflow: auto; font-size: .9rem; }
.hit-title { font-size: .95rem; margin: 0; display: flex; gap: .4rem; align-items: baseline; }
.hit-id { overflow-wrap: anywhere; }
.caption { margin: 0; overflow-wrap: anywhere; }
.meta { color: var(--muted); font-size: .8rem; margin: 0; }
dl.scores { display: flex; gap: .9rem; margin: 0; }
dl.scores dt { font-size: .72rem; color: var(--muted); }
dl.scores dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
footer { color: var(--muted); font-size: .8rem; margin-top: 2rem; }
kbd { border: 1px solid var(--line); border-bottom-width: 2px; border-radius: 4px; padding: 0 .3rem; font-size: .75rem; }
"""

BODY = """
<header><h1>r3 search</h1><p id="served">connecting&hellip;</p></header>
<main>
<form id="auth" hidden aria-label="Sign in to the service">
  <div><label id="auth-title" for="token">Access token</label>
    <p id="auth-note" class="hint"></p></div>
  <input type="password" id="token" autocomplete="current-password">
  <div class="actions"><button type="submit">Use this token</button></div>
</form>
<form id="search" role="search" aria-label="Search the gallery">
  <fieldset class="modes"><legend>Query</legend>
    <label><input type="radio" name="mode" id="mode-text" value="text" checked> Text</label>
    <label><input type="radio" name="mode" id="mode-composed" value="composed">
      Composed: a source from the gallery and an edit</label>
  </fieldset>
  <div id="text-panel">
    <label for="text">What are you looking for?</label>
    <input type="search" id="text" autocomplete="off" placeholder="a red circle moving right at night">
  </div>
  <div id="composed-panel" class="composed" hidden>
    <div class="combo">
      <label for="source">Source item</label>
      <input type="text" id="source" role="combobox" aria-autocomplete="list" aria-expanded="false"
        aria-controls="source-list" aria-describedby="source-count" autocomplete="off" spellcheck="false"
        placeholder="type part of an id or caption">
      <ul id="source-list" role="listbox" aria-label="Gallery items" hidden></ul>
      <p id="source-count" class="hint" aria-live="polite"></p>
      <div id="source-preview" class="preview" hidden></div>
    </div>
    <div>
      <label for="edit">Edit: how the target differs from the source</label>
      <input type="text" id="edit" autocomplete="off" placeholder="make it night">
    </div>
  </div>
  <div class="row">
    <div><label for="gallery">Gallery</label><select id="gallery"></select></div>
    <div><label for="top_k">Results (top k)</label><input type="number" id="top_k" value="10" min="1" max="1000"></div>
    <div><label for="where">Filter (<code>where</code>, optional)</label>
      <input type="text" id="where" autocomplete="off" spellcheck="false" aria-describedby="where-hint"
        placeholder="`group` = 'holiday'">
      <p id="where-hint" class="hint">LanceDB SQL on the stored columns: id, path, text, group</p></div>
  </div>
  <div class="actions"><button type="submit" id="go">Search</button>
    <p class="hint"><kbd>Enter</kbd> searches, <kbd>/</kbd> goes to the query, <kbd>&uarr;</kbd><kbd>&darr;</kbd>
      move through the source list and the results</p></div>
</form>
<div id="message" role="alert" hidden><strong>Error:</strong> <span id="message-text"></span></div>
<ul id="warnings" aria-label="Warnings" hidden></ul>
<p id="status" role="status" aria-live="polite"></p>
<section id="info" aria-labelledby="info-title" hidden>
  <h2 id="info-title">How it was answered</h2>
  <dl id="facts" class="facts"></dl>
</section>
<section aria-labelledby="results-title">
  <h2 id="results-title" hidden></h2>
  <ol id="results"></ol>
</section>
<footer>The JSON API behind this page: <code>POST /v1/query</code>, <code>GET /v1/items</code>,
  <code>/openapi.json</code> (docs/serving.md).</footer>
</main>
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own script and style may run, by hash: injected markup, had any slipped through, runs nothing.
CSP = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)

PAGE_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>r3 search</title>
<style>{STYLE}</style>
</head>
<body>{BODY}<script>{SCRIPT}</script>
</body>
</html>
"""

__all__ = ["PAGE_HTML"]
