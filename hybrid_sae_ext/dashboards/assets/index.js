"use strict";
// The index: a sortable, filterable table of every latent, built from the columns embedded in the page.
(function () {
  const data = JSON.parse(document.getElementById("index-data").textContent);
  const n = data.density.length, first = data.first;
  const rows = [];
  for (let i = 0; i < n; i++) {
    rows.push({ latent: first + i, density: data.density[i], max: data.max[i], mean: data.mean[i], top: data.top[i],
                text: data.top[i].join("").toLowerCase(),
                flags: data.density[i] === 0 ? "dead" : (data.density[i] > data.dense ? "dense" : "") });
  }
  const body = document.getElementById("latents-body");
  const filter = document.getElementById("filter"), hideDead = document.getElementById("hide-dead");
  const onlyDense = document.getElementById("only-dense"), shown = document.getElementById("shown");
  const headers = [...document.querySelectorAll("th[data-key]")];
  headers.forEach((th) => th.appendChild(el("span", { class: "arrow" })));
  let sortKey = "latent", ascending = true;
  function render() {
    const query = filter.value.toLowerCase();
    const kept = rows.filter((r) => (!hideDead.checked || r.flags !== "dead") && (!onlyDense.checked || r.flags === "dense") &&
      (!query || String(r.latent) === query || r.text.includes(query)));
    const key = sortKey === "top" ? "text" : sortKey;
    kept.sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : a.latent - b.latent) * (ascending ? 1 : -1));
    body.replaceChildren(...kept.map((r) => el("tr", { "data-latent": String(r.latent) }, [
      el("td", {}, [el("a", { href: "latents/" + pad5(r.latent) + ".html", text: String(r.latent) })]),
      el("td", { text: fmt(r.density) }), el("td", { text: fmt(r.max) }), el("td", { text: fmt(r.mean) }),
      el("td", { class: "top-tokens" }, r.top.map((t) => tokenChip(t, "chip"))), el("td", { text: r.flags }),
    ])));
    for (const th of headers) {
      const active = th.dataset.key === sortKey;
      th.setAttribute("aria-sort", active ? (ascending ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = active ? (ascending ? " \u25b2" : " \u25bc") : "";
    }
    shown.textContent = kept.length + " of " + n + " latents";
  }
  headers.forEach((th) => th.addEventListener("click", () => {
    ascending = sortKey === th.dataset.key ? !ascending : th.dataset.key === "latent";
    sortKey = th.dataset.key;
    render();
  }));
  for (const input of [filter, hideDead, onlyDense]) input.addEventListener("input", render);
  render();
})();
