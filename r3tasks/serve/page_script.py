"""The search page's script (`r3tasks.serve.page` serves it inline): plain browser JavaScript calling the JSON API.

Every text that reaches the page (a user's query, a stored caption, a model's reasoning, an error line) is
set with `textContent`, never `innerHTML`: `<script>` or `<|im_end|>` in a caption shows as those characters.
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "r3-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let searchSeq = 0, sourceSeq = 0, previewSeq = 0, sourceTimer = null, active = -1, options = [];

class ApiError extends Error {}

// Python's json writes NaN and +-Infinity bare (an unscored rerank candidate is -Infinity) and JSON.parse
// refuses them: quote them, outside strings only, so one odd score cannot blank the whole answer.
function parseLenient(text) {
  try { return JSON.parse(text); } catch (e) { /* below */ }
  let out = "", inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") out += text[++i]; else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') { inString = true; out += c; continue; }
    const bare = /^(-?Infinity|NaN)/.exec(text.slice(i, i + 9));
    if (bare) { out += '"' + bare[1] + '"'; i += bare[1].length - 1; } else out += c;
  }
  return JSON.parse(out);
}

async function api(path, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try { response = await fetch(path, init); } catch (e) { throw new ApiError("cannot reach the service: " + e.message); }
  if (response.status === 401) {
    askForToken(token ? "The service refused that token: enter it again." : null);
    throw new ApiError("this service needs an access token: enter it above");
  }
  if (!response.ok) {
    let line = response.status + " " + response.statusText;
    try { line = parseLenient(await response.text()).error || line; } catch (e) { /* keep the status */ }
    throw new ApiError(line);
  }
  return response;
}
const getJSON = async (path, body) => parseLenient(await (await api(path, body)).text());

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function itemPath(id, suffix, at, extra) {
  const params = new URLSearchParams(extra || {});
  if (at.gallery) params.set("gallery", at.gallery);
  if (at.version !== undefined && at.version !== null) params.set("gallery_version", String(at.version));
  return "/v1/items/" + id.split("/").map(encodeURIComponent).join("/") + suffix + "?" + params;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "\u2014";
  if (typeof value !== "number") return value === "-Infinity" ? "\u2212\u221e" : value === "Infinity" ? "\u221e" : String(value);
  return value.toFixed(digits === undefined ? 3 : digits);
}
const yesNo = (value) => (value === null || value === undefined ? "\u2014" : value ? "yes" : "no");

function askForToken(note) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  const form = $("auth");
  $("auth-note").textContent = note || "This service needs an access token. It is kept for this browser tab only.";
  if (!form.hidden) return;
  form.hidden = false;
  $("token").value = "";
  $("token").focus();
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("auth").hidden = true;
  clearMessage();
  loadGalleries().then(() => queryInput().focus());
});

function showMessage(line) { $("message-text").textContent = line; $("message").hidden = false; }
function clearMessage() { $("message").hidden = true; $("message-text").textContent = ""; }

async function loadGalleries() {
  try {
    const data = await getJSON("/v1/galleries");
    const select = $("gallery"), keep = select.value, names = new Set();
    select.replaceChildren();
    for (const g of data.galleries) {
      if (g.gallery === "(legacy)" || names.has(g.gallery)) continue;
      names.add(g.gallery);
      const option = el("option", null, g.gallery + " (" + g.rows + " items)");
      option.value = g.gallery;
      select.append(option);
    }
    select.value = keep && names.has(keep) ? keep : data.served;
    $("served").textContent = "serving gallery " + data.served + " from " + data.uri;
  } catch (e) {
    $("served").textContent = "";
    if (!(e instanceof ApiError && !$("auth").hidden)) showMessage("galleries: " + e.message);
  }
}

const mode = () => ($("mode-composed").checked ? "composed" : "text");
const queryInput = () => (mode() === "text" ? $("text") : $("source").value ? $("edit") : $("source"));
function showMode() {
  $("text-panel").hidden = mode() !== "text";
  $("composed-panel").hidden = mode() !== "composed";
}
for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);

function thumbnail(details, at) {
  if (details.kind !== "video") {
    const tile = el("div", "thumb text-only");
    tile.append(el("p", "caption", details.text || "(no text)"));
    return tile;
  }
  const box = el("div", "thumb", "loading\u2026");
  api(itemPath(details.id, "/thumbnail", at, { size: "320" }))
    .then((response) => response.blob())
    .then((blob) => {
      const img = el("img");
      img.alt = "middle frame of " + details.id;
      img.src = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      box.replaceChildren(img);
    })
    .catch((e) => { box.textContent = "no frame: " + e.message; });
  return box;
}

function closeList() {
  $("source-list").hidden = true;
  $("source-count").textContent = "";
  $("source").setAttribute("aria-expanded", "false");
  $("source").removeAttribute("aria-activedescendant");
  active = -1;
}

function setActive(index) {
  const nodes = $("source-list").querySelectorAll("[role=option]");
  if (!nodes.length) return;
  active = (index + nodes.length) % nodes.length;
  nodes.forEach((node, i) => node.setAttribute("aria-selected", String(i === active)));
  $("source").setAttribute("aria-activedescendant", nodes[active].id);
  nodes[active].scrollIntoView({ block: "nearest" });
}

async function findSources(activateFirst) {
  const seq = ++sourceSeq;
  let data;
  try {
    data = await getJSON("/v1/items?" + new URLSearchParams({ q: $("source").value.trim(), limit: "20", gallery: $("gallery").value }));
  } catch (e) {
    if (seq === sourceSeq) { closeList(); $("source-count").textContent = "cannot list items: " + e.message; }
    return;
  }
  if (seq !== sourceSeq || document.activeElement !== $("source")) return;
  options = data.items;
  const list = $("source-list");
  list.replaceChildren();
  options.forEach((item, i) => {
    const option = el("li");
    option.id = "source-option-" + i;
    option.setAttribute("role", "option");
    option.setAttribute("aria-selected", "false");
    option.append(el("span", "option-id", item.id), el("span", "option-text", item.text || "(" + item.kind + ")"));
    // mousedown, not click: it comes before the input's blur, which closes the list.
    option.addEventListener("mousedown", (event) => { event.preventDefault(); pickSource(item.id); });
    list.append(option);
  });
  const shown = options.length;
  $("source-count").textContent = data.total === 0 ? "no item matches" : data.total > shown
    ? shown + " of " + data.total + " items: type more to narrow them" : data.total + (data.total === 1 ? " item" : " items");
  list.hidden = shown === 0;
  $("source").setAttribute("aria-expanded", String(shown > 0));
  active = -1;
  if (activateFirst) setActive(0);
}

function pickSource(id) {
  $("source").value = id;
  closeList();
  showSourcePreview(id);
  $("edit").focus();
}

async function showSourcePreview(id) {
  const box = $("source-preview"), seq = ++previewSeq, at = { gallery: $("gallery").value };
  box.replaceChildren();
  box.hidden = !id;
  if (!id) return;
  try {
    const details = await getJSON(itemPath(id, "", at));
    if (seq !== previewSeq) return;
    if (details.kind === "video") box.append(thumbnail(details, at));
    box.append(el("p", "caption", details.text || "(no text)"));
  } catch (e) {
    if (seq === previewSeq) box.append(el("p", "hint", e.message));
  }
}

$("source").addEventListener("input", () => {
  clearTimeout(sourceTimer);
  sourceTimer = setTimeout(() => findSources(false), 120);
});
$("source").addEventListener("focus", () => findSources(false));
$("source").addEventListener("blur", () => { closeList(); showSourcePreview($("source").value.trim()); });
$("source").addEventListener("keydown", (event) => {
  const open = !$("source-list").hidden;
  if (event.key === "ArrowDown") { event.preventDefault(); if (open) setActive(active + 1); else findSources(true); }
  else if (event.key === "ArrowUp" && open) { event.preventDefault(); setActive(active - 1); }
  else if (event.key === "Escape" && open) { event.preventDefault(); closeList(); }
  else if (event.key === "Enter" && open) {
    const typed = $("source").value.trim(), exact = options.find((item) => item.id === typed);
    if (active >= 0 || exact) { event.preventDefault(); pickSource(active >= 0 ? options[active].id : exact.id); }
  }
});
$("gallery").addEventListener("change", () => showSourcePreview($("source").value.trim()));

function useAsSource(id) {
  $("mode-composed").checked = true;
  showMode();
  $("source").value = id;
  showSourcePreview(id);
  $("edit").focus();
  $("edit").scrollIntoView({ block: "center" });
}

function fact(label, value) {
  const dd = el("dd", null, value);
  $("facts").append(el("dt", null, label), dd);
  return dd;
}

function clearResults() {
  for (const id of ["results", "facts", "warnings"]) $(id).replaceChildren();
  for (const id of ["info", "warnings", "results-title"]) $(id).hidden = true;
}

function renderResult(data, row, at, ms) {
  const result = data.results[0];
  clearResults();
  if (result.error) showMessage(result.error);
  for (const warning of result.warnings || []) $("warnings").append(el("li", null, warning));
  $("warnings").hidden = !(result.warnings || []).length;
  const title = $("results-title");
  title.textContent = row.text !== undefined
    ? "Results for \u201c" + row.text + "\u201d" : "Results for " + row.source + " + \u201c" + row.edit + "\u201d";
  title.hidden = false;
  if (result.reasoning !== null && result.reasoning !== undefined) {
    fact("Reasoning", result.reasoning).id = "reasoning";
    const gate = result.gate || {};
    fact("Reasoning gate", "agreement " + fmt(gate.agreement) + ", source similarity " + fmt(gate.source_similarity)
      + ", names the edit: " + yesNo(gate.names_edit) + ", used: " + yesNo(gate.used));
  }
  const rerank = result.rerank;
  fact("Rerank", !rerank ? "not run" : rerank.pairs + " pairs scored, depth " + rerank.depth + "; "
    + (rerank.gate ? "the " + rerank.gate + " gate kept the recall order" : "final order from the reranker's scores"));
  $("info").hidden = false;
  const ranked = result.ranked || [];
  const lineage = data.lineage || {};
  $("status").textContent = ranked.length + (ranked.length === 1 ? " result" : " results") + " from gallery "
    + (at.gallery || $("gallery").value) + " version " + at.version + (lineage.where ? " where " + lineage.where : "")
    + " in " + ms + " ms";
  ranked.forEach((item, i) => $("results").append(resultCard(item, i, at)));
}

function resultCard(item, i, at) {
  const card = el("li", "hit"), title = el("h3", "hit-title");
  card.tabIndex = 0;
  card.dataset.id = item.id;
  title.id = "hit-" + i;
  title.append(el("span", "rank", (i + 1) + "."), el("span", "hit-id", item.id));
  card.setAttribute("aria-labelledby", title.id);
  const holder = el("div", "thumb", "\u2026"), caption = el("p", "caption"), scores = el("dl", "scores");
  for (const [label, value] of [["score", item.score], ["embedding", item.embedding_score], ["reranker", item.reranker_score]]) {
    const pair = el("div");
    pair.append(el("dt", null, label), el("dd", null, fmt(value)));
    scores.append(pair);
  }
  card.append(holder, title, caption, scores);
  const start = item.start_s, end = item.end_s;
  if (typeof start === "number" || typeof end === "number") {
    card.append(el("p", "meta moment", "moment " + fmt(start, 1) + " s \u2013 " + fmt(end, 1) + " s"));
  }
  const use = el("button", "use", "Use as source");
  use.type = "button";
  use.setAttribute("aria-label", "Use " + item.id + " as the source of a composed query");
  use.addEventListener("click", () => useAsSource(item.id));
  card.append(use);
  getJSON(itemPath(item.id, "", at)).then((details) => {
    holder.replaceWith(thumbnail(details, at));
    if (details.kind === "video") {
      // An uncaptioned moment shows what is said and written in it: that is what it was found by.
      const read = [details.transcript, details.screen_text].filter(Boolean).join(" \u00b7 ");
      caption.textContent = details.text || read || "(no caption)";
      if (details.text && read) card.append(el("p", "meta read", read));
    }
    else caption.remove();  // a text item's text is its tile
    const seconds = details.times && details.times.duration_s;
    const kind = details.kind !== "video" ? "text item" : typeof seconds === "number" ? "video, " + fmt(seconds, 1) + " s" : "video";
    title.after(el("p", "meta", kind + (details.group ? ", group " + details.group : "")));
  }).catch((e) => { holder.textContent = ""; caption.textContent = "(" + e.message + ")"; });
  return card;
}

$("results").addEventListener("keydown", (event) => {
  const cards = [...$("results").children], at = cards.indexOf(event.target);
  if (at < 0) return;
  const to = { ArrowDown: at + 1, ArrowRight: at + 1, ArrowUp: at - 1, ArrowLeft: at - 1, Home: 0, End: cards.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  cards[Math.max(0, Math.min(cards.length - 1, to))].focus();
});

document.addEventListener("keydown", (event) => {
  const typing = /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(event.target.tagName);
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey) { event.preventDefault(); queryInput().focus(); }
});

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearMessage();
  const composed = mode() === "composed";
  // Sent as typed: an edit or a text is data, and the service reads it as written.
  const row = composed ? { id: "composed", source: $("source").value.trim(), edit: $("edit").value } : { id: "text", text: $("text").value };
  const missing = composed ? (!row.source ? "source" : !row.edit.trim() ? "edit" : null) : !row.text.trim() ? "text" : null;
  if (missing) {
    showMessage({ source: "pick a source item first", edit: "type how the target differs from the source", text: "type what to look for" }[missing]);
    $(missing).focus();
    return;
  }
  closeList();
  const at = { gallery: $("gallery").value || null };
  const topK = parseInt($("top_k").value, 10);
  const body = { queries: [row], top_k: topK > 0 ? topK : null, gallery: at.gallery, where: $("where").value.trim() || null };
  const seq = ++searchSeq, started = performance.now();
  $("results").setAttribute("aria-busy", "true");
  $("status").textContent = "searching\u2026";
  let data;
  try {
    data = await getJSON("/v1/query", body);
  } catch (e) {
    if (seq !== searchSeq) return;
    clearResults();
    $("results").removeAttribute("aria-busy");
    $("status").textContent = "";
    showMessage(e.message);
    return;
  }
  if (seq !== searchSeq) return;
  at.version = data.lineage && data.lineage.gallery ? data.lineage.gallery.version : null;
  $("results").removeAttribute("aria-busy");
  renderResult(data, row, at, Math.round(performance.now() - started));
});

showMode();
loadGalleries().finally(() => { document.body.dataset.ready = "true"; });
"""

__all__ = ["SCRIPT"]
