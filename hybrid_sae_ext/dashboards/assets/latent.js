"use strict";
// Renders one latent's dashboard from the JSON embedded in the page.
(function () {
  const d = JSON.parse(document.getElementById("latent-data").textContent);
  const root = document.getElementById("root");
  const link = (i) => el("a", { href: pad5(i) + ".html", class: "latent-link", text: "#" + i });
  const flags = [];
  if (d.dead) flags.push(el("span", { class: "flag dead", text: "dead" }));
  if (d.dense) flags.push(el("span", { class: "flag dense", text: "dense" }));
  root.appendChild(el("h1", { text: "Latent " + d.index + " " }, flags));
  root.appendChild(el("div", { class: "stats" }, [
    el("span", { id: "density", text: "density " + fmt(d.density) + " (" + d.count + " firings)" }),
    el("span", { text: "max " + fmt(d.max) }), el("span", { text: "mean " + fmt(d.mean) }),
    el("span", {}, [el("a", { href: "../index.html", text: "index" })]),
  ]));
  root.appendChild(el("h2", { text: "Activation histogram (non-zero activations, equal-width bins from 0 to max)" }));
  const act = el("div", { id: "activation-histogram" }); root.appendChild(act); histogram(act, d.histogram);

  const examples = (title, id, list, withQuantile) => {
    root.appendChild(el("h2", { text: title }));
    const box = el("div", { id: id });
    if (!list.length) box.appendChild(el("p", { text: "none" }));
    list.forEach((e) => {
      const row = el("div", { class: "example", "data-activation": String(e.activation) });
      if (withQuantile) row.appendChild(el("span", { class: "act q", text: "q=" + e.quantile.toFixed(2) }));
      row.appendChild(el("span", { class: "act", text: fmt(e.activation), title: "activation at the outlined token" }));
      row.appendChild(tokenLine(e.tokens, e.values, d.max, e.center, e.token_bytes));
      box.appendChild(row);
    });
    root.appendChild(box);
  };
  examples("Top activating examples", "top-examples", d.top_examples, false);
  examples("Examples at true activation quantiles (q = share of this latent's firings below the activation)",
    "quantile-examples", d.quantile_examples, true);

  root.appendChild(el("h2", { text: "Logit effects (W_dec @ W_U)" }));
  const table = (rows, cls) => el("table", {}, rows.map((r) => el("tr", {}, [
    el("td", { class: "logit-token" }, [tokenChip(r.token, "chip")]), el("td", { class: cls, text: fmt(r.value) })])));
  root.appendChild(el("div", { class: "cols" }, [
    el("div", { id: "logits-positive" }, [el("b", { text: "promoted" }), table(d.logits.positive, "pos")]),
    el("div", { id: "logits-negative" }, [el("b", { text: "suppressed" }), table(d.logits.negative, "neg")]),
  ]));
  const lh = el("div", { id: "logit-histogram" }); root.appendChild(lh); histogram(lh, d.logits.histogram, "logit");

  const neighbours = (title, id, list, value) => el("div", { id: id }, [el("b", { text: title }),
    el("table", {}, (list || []).map((n) => el("tr", {}, [el("td", {}, [link(n.latent)]), el("td", { text: value(n) })])))]);
  root.appendChild(el("h2", { text: "Related latents" }));
  root.appendChild(el("div", { class: "cols" }, [
    neighbours("nearest by decoder cosine", "decoder-neighbours", d.decoder_neighbours, (n) => fmt(n.cosine)),
    neighbours("co-firing (Jaccard)", "cofiring", d.cofiring, (n) => fmt(n.jaccard) + " (" + n.count + " tokens)"),
  ]));
  if (d.hybrid) {
    const h = d.hybrid;
    root.appendChild(el("h2", { text: "Hybrid SAE: top-k candidate vs gate" }));
    root.appendChild(el("p", { id: "hybrid-rates",
      text: "top-k candidate on " + h.candidate_count + " tokens; gate opened on " + h.gate_open_count +
            " (" + (100 * h.open_given_candidate).toFixed(1) + "% of candidacies). " +
            "Its values when selected are the activation histogram above; below, pi_gate of its candidacies (opens where > 0)." }));
    const gh = el("div", { id: "gate-histogram" }); root.appendChild(gh); histogram(gh, h.gate_histogram, "gate");
  }
})();
