"use strict";
// Shared helpers of every dashboard page; no network access, no external library.
function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}
function fmt(x, digits) { return Number(x).toPrecision(digits || 3); }
function pad5(i) { return String(i).padStart(5, "0"); }
// A histogram as flex bars whose heights are proportional to the counts.
function histogram(container, hist, cls) {
  const peak = Math.max(1, ...hist.counts);
  const bars = el("div", { class: "hist " + (cls || "") });
  const width = (hist.high - hist.low) / hist.counts.length;
  hist.counts.forEach((count, i) => {
    const lo = hist.low + i * width;
    bars.appendChild(el("div", {
      class: "bar", "data-count": String(count), style: "height:" + (100 * count / peak) + "%",
      title: count + " in [" + fmt(lo) + ", " + fmt(lo + width) + ")",
    }));
  });
  container.appendChild(bars);
  container.appendChild(el("div", { class: "axis" }, [el("span", { text: fmt(hist.low) }), el("span", { text: fmt(hist.high) })]));
}
// Whitespace drawn as visible glyphs (as Neuronpedia does), so indentation and line ends can be read.
const WHITESPACE_GLYPHS = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5" };
const TOKEN_CHARS = 24;  // longer tokens are cut to this many characters plus an ellipsis; the tooltip has all
// A token as an inline-block chip: whitespace as faint glyphs, long tokens cut, the raw token in the tooltip.
function tokenChip(token, cls, tooltip) {
  const cut = token.length > TOKEN_CHARS;
  const chip = el("span", { class: "tok " + (cls || ""), title: JSON.stringify(token) + (tooltip ? "\n" + tooltip : "") });
  for (const run of (cut ? token.slice(0, TOKEN_CHARS - 1) : token).match(/[ \n\t]+|[^ \n\t]+/g) || []) {
    const glyphs = run.replace(/[ \n\t]/g, (c) => WHITESPACE_GLYPHS[c]);
    chip.appendChild(glyphs === run ? document.createTextNode(run) : el("span", { class: "ws", text: glyphs }));
  }
  if (cut) chip.appendChild(el("span", { class: "cut", text: "\u2026" }));
  return chip;
}
// Tokens of a text, each shaded by its value relative to `scale`; the lines wrap between tokens.
function tokenLine(tokens, values, scale, centre, bytes) {
  const line = el("span", { class: "tokens" });
  tokens.forEach((token, i) => {
    const v = values[i] || 0;
    const alpha = scale > 0 ? Math.min(1, v / scale) : 0;
    const chip = tokenChip(token, i === centre ? "centre" : "", "activation " + v + (bytes ? " | bytes " + bytes[i] : ""));
    chip.dataset.value = String(v);
    chip.style.background = "rgba(231, 111, 40, " + alpha.toFixed(3) + ")";
    line.appendChild(chip);
  });
  return line;
}
