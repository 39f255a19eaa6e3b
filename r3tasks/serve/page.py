"""The service's search page (`GET /`): one static HTML file that calls the JSON API from the browser.

Kept as a string in a module so it ships with the package however it is installed. It shows what users
typed and what the gallery stores with `textContent` only: no text ever becomes markup.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>r3 search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; }
  fieldset { border: 1px solid #ccc; margin-bottom: 1rem; }
  label { display: block; margin: .3rem 0; }
  input[type=text], input[type=password] { width: 32rem; }
  .hit { display: flex; gap: 1rem; align-items: center; border-bottom: 1px solid #eee; padding: .4rem 0; }
  .hit img { width: 160px; min-height: 1px; }
  .meta { color: #555; font-size: .9rem; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>r3 search</h1>
<form id="search">
  <fieldset>
    <label>Text query <input type="text" id="text" placeholder="a dog running on a beach"></label>
    <p class="meta">or a composed query: a gallery item and how the target differs from it</p>
    <label>Source item id <input type="text" id="source"></label>
    <label>Edit <input type="text" id="edit" placeholder="make it night"></label>
  </fieldset>
  <fieldset>
    <label>Gallery <select id="gallery"></select></label>
    <label>Results <input type="number" id="top_k" value="10" min="1" max="200"></label>
    <label>Filter (where) <input type="text" id="where" placeholder="`group` = 'holiday'"></label>
    <label>Token <input type="password" id="token" placeholder="only when the service has one"></label>
  </fieldset>
  <button type="submit">Search</button>
</form>
<p id="status" class="meta"></p>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
$("token").value = sessionStorage.getItem("r3-token") || "";

function headers() {
  const token = $("token").value.trim();
  sessionStorage.setItem("r3-token", token);
  const h = { "Content-Type": "application/json" };
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function call(path, body) {
  const init = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (e) {}
    throw new Error(response.status + ": " + message);
  }
  return response;
}

async function loadGalleries() {
  try {
    const data = await (await call("/v1/galleries")).json();
    $("gallery").replaceChildren();
    const names = [...new Set(data.galleries.map((g) => g.gallery).filter((n) => n !== "(legacy)"))];
    for (const name of names) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      option.selected = name === data.served;
      $("gallery").append(option);
    }
  } catch (e) { $("status").textContent = "galleries: " + e.message; }
}

async function showThumbnail(img, id, gallery, version) {
  const query = new URLSearchParams({ gallery: gallery, gallery_version: String(version) });
  const path = "/v1/items/" + id.split("/").map(encodeURIComponent).join("/") + "/thumbnail?" + query;
  try { img.src = URL.createObjectURL(await (await call(path)).blob()); } catch (e) { img.alt = "no video"; }
}

async function itemText(id, gallery, version) {
  const query = new URLSearchParams({ gallery: gallery, gallery_version: String(version) });
  try {
    const path = "/v1/items/" + id.split("/").map(encodeURIComponent).join("/") + "?" + query;
    return (await (await call(path)).json()).text || "";
  } catch (e) { return ""; }
}

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const row = { id: "q" };
  if ($("source").value.trim()) { row.source = $("source").value.trim(); row.edit = $("edit").value; }
  else { row.text = $("text").value; }
  const gallery = $("gallery").value || null;
  const body = { queries: [row], top_k: Number($("top_k").value) || null, gallery: gallery, where: $("where").value || null };
  $("status").textContent = "searching...";
  $("results").replaceChildren();
  try {
    const started = performance.now();
    const data = await (await call("/v1/query", body)).json();
    const result = data.results[0];
    const version = data.lineage.gallery.version;
    $("status").textContent = "gallery version " + version + ", " + Math.round(performance.now() - started) + " ms";
    if (result.error) { $("status").textContent = result.error; $("status").className = "error"; return; }
    $("status").className = "meta";
    for (const item of result.ranked) {
      const hit = document.createElement("div");
      hit.className = "hit";
      const img = document.createElement("img");
      const text = document.createElement("div");
      const title = document.createElement("div");
      title.textContent = item.id + "  " + item.score.toFixed(3);
      const caption = document.createElement("div");
      caption.className = "meta";
      text.append(title, caption);
      hit.append(img, text);
      $("results").append(hit);
      showThumbnail(img, item.id, gallery || "", version);
      itemText(item.id, gallery || "", version).then((t) => { caption.textContent = t; });
    }
  } catch (e) { $("status").textContent = e.message; $("status").className = "error"; }
});
loadGalleries();
</script>
</body>
</html>
"""
