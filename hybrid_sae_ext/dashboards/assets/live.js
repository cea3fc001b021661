"use strict";
// The live page: calls this server's API only (same origin) and shows the answers.
(function () {
  const $ = (id) => document.getElementById(id);
  async function post(path, body) {
    const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.error || response.statusText);
    return payload;
  }
  function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }
  async function analyze() {
    showError(null);
    const text = $("text").value, feature = Number($("feature").value);
    try {
      const acts = await post("/api/activations", { text: text, feature: feature });
      const peak = Math.max(0, ...acts.values);
      $("tokens").replaceChildren(tokenLine(acts.tokens, acts.values, peak, -1, acts.token_bytes));
      const found = await post("/api/search", { text: text, top: 10 });
      $("search").tBodies[0].replaceChildren(...found.features.map((f) => el("tr", { "data-feature": String(f.feature) }, [
        el("td", {}, [el("a", { href: "/dashboards/latents/" + pad5(f.feature) + ".html", text: "#" + f.feature })]),
        el("td", { text: "total " + fmt(f.total) }), el("td", { text: "max " + fmt(f.max) }),
        el("td", {}, [el("button", { class: "use", text: "shade by it" })]),
      ])));
      $("search").querySelectorAll("button.use").forEach((b) => b.addEventListener("click", () => {
        $("feature").value = b.closest("tr").dataset.feature; analyze();
      }));
    } catch (err) { showError(err); }
  }
  async function steer() {
    showError(null);
    try {
      const out = await post("/api/steer", { text: $("text").value, feature: Number($("feature").value),
        strength: Number($("strength").value), mode: $("mode").value, seed: Number($("seed").value),
        max_new_tokens: Number($("new-tokens").value) });
      $("default").textContent = out.default; $("steered").textContent = out.steered;
    } catch (err) { showError(err); }
  }
  $("analyze").addEventListener("click", analyze);
  $("steer").addEventListener("click", steer);
  fetch("/health").then((r) => r.json()).then((h) => { $("model").textContent = h.model + " · " + h.hook + " · " + h.d_sae + " latents"; });
})();
