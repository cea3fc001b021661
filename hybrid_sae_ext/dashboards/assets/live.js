"use strict";
// The live page: calls this server's API only (same origin) and shows the answers.
(function () {
  const $ = (id) => document.getElementById(id);
  const TOP_LATENTS = 5;  // latents listed when hovering a token
  async function post(path, body) {
    const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.error || response.statusText);
    return payload;
  }
  function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }
  // Results shown for an older input are dimmed until they are computed again; a failed request clears its own.
  const sections = { analyze: ["tokens", "search"], steer: ["default", "steered"] };
  function markStale(names, stale) { for (const id of names) $(id).classList.toggle("stale", stale); }
  function clearResults(names) {
    for (const id of names) (id === "search" ? $(id).tBodies[0] : $(id)).replaceChildren();
    if (names.includes("tokens")) hideLatents();
  }

  const popup = $("token-latents");
  function hideLatents() { popup.hidden = true; }
  // The top latents of one token, in a box under it, each linking to its dashboard page.
  function showLatents(chip, token, latents, chosen) {
    const rows = latents.map((f) => el("tr", { "data-feature": String(f.feature), class: f.feature === chosen ? "chosen" : "" }, [
      el("td", {}, [el("a", { href: "/dashboards/latents/" + pad5(f.feature) + ".html", text: "#" + f.feature })]),
      el("td", { class: "value", text: fmt(f.activation) }),
    ]));
    popup.replaceChildren(el("div", {}, [tokenChip(token, "chip"), el("span", { text: " top latents" })]),
      rows.length ? el("table", {}, rows) : el("p", { text: "no latent fires on this token" }));
    popup.hidden = false;  // shown first, so that its width is known and it can be kept inside the window
    const box = chip.getBoundingClientRect(), room = document.documentElement.clientWidth - popup.offsetWidth;
    popup.style.left = (Math.max(0, Math.min(box.left, room)) + window.scrollX) + "px";
    popup.style.top = (box.bottom + window.scrollY) + "px";
  }
  function showTokens(acts) {
    const line = tokenLine(acts.tokens, acts.values, Math.max(0, ...acts.values), -1, acts.token_bytes);
    [...line.children].forEach((chip, i) => {
      chip.tabIndex = 0;
      const show = () => showLatents(chip, acts.tokens[i], acts.features[i], acts.feature);
      chip.addEventListener("mouseenter", show);
      chip.addEventListener("focus", show);
    });
    $("tokens").replaceChildren(line);
  }
  $("tokens").addEventListener("mouseleave", (ev) => { if (!popup.contains(ev.relatedTarget)) hideLatents(); });
  popup.addEventListener("mouseleave", (ev) => { if (!$("tokens").contains(ev.relatedTarget)) hideLatents(); });

  const latest = { analyze: 0, steer: 0 };  // only the newest request of each kind may draw its answer
  async function run(kind, work) {
    const ticket = ++latest[kind];
    showError(null);
    try {
      await work(() => ticket === latest[kind]);
      if (ticket === latest[kind]) markStale(sections[kind], false);
    } catch (err) {
      if (ticket !== latest[kind]) return;
      clearResults(sections[kind]);
      markStale(sections[kind], false);
      showError(err);
    }
  }
  const analyze = () => run("analyze", async (current) => {
    const text = $("text").value, feature = Number($("feature").value);
    const acts = await post("/api/activations", { text: text, feature: feature, top_k: TOP_LATENTS });
    const found = await post("/api/search", { text: text, top: 10 });
    if (!current()) return;
    showTokens(acts);
    $("search").tBodies[0].replaceChildren(...found.features.map((f) => el("tr", { "data-feature": String(f.feature) }, [
      el("td", {}, [el("a", { href: "/dashboards/latents/" + pad5(f.feature) + ".html", text: "#" + f.feature })]),
      el("td", { text: "total " + fmt(f.total) }), el("td", { text: "max " + fmt(f.max) }),
      el("td", {}, [el("button", { class: "use", text: "shade by it" })]),
    ])));
    $("search").querySelectorAll("button.use").forEach((b) => b.addEventListener("click", () => {
      $("feature").value = b.closest("tr").dataset.feature; analyze();
    }));
  });
  const steer = () => run("steer", async (current) => {
    const out = await post("/api/steer", { text: $("text").value, feature: Number($("feature").value),
      strength: Number($("strength").value), mode: $("mode").value, seed: Number($("seed").value),
      max_new_tokens: Number($("new-tokens").value) });
    if (!current()) return;
    $("default").textContent = out.default; $("steered").textContent = out.steered;
  });
  $("analyze").addEventListener("click", analyze);
  $("steer").addEventListener("click", steer);
  const readBy = { text: ["analyze", "steer"], feature: ["analyze", "steer"], strength: ["steer"], mode: ["steer"],
                   seed: ["steer"], "new-tokens": ["steer"] };  // which results each input changes
  for (const [id, kinds] of Object.entries(readBy)) {
    $(id).addEventListener("input", () => kinds.forEach((kind) => markStale(sections[kind], true)));
  }
  fetch("/health").then((r) => r.json()).then((h) => { $("model").textContent = h.model + " · " + h.hook + " · " + h.d_sae + " latents"; });
})();
