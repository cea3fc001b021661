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
// Newlines and tabs drawn visibly, so an example stays on one line.
function shownToken(token) { return token.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192"); }
// Tokens of a text, each shaded by its value relative to `scale`.
function tokenLine(tokens, values, scale, centre, bytes) {
  const line = el("span");
  tokens.forEach((token, i) => {
    const v = values[i] || 0;
    const alpha = scale > 0 ? Math.min(1, v / scale) : 0;
    const span = el("span", {
      class: "tok" + (i === centre ? " centre" : ""), "data-value": String(v),
      style: "background: rgba(231, 111, 40, " + alpha.toFixed(3) + ")", title: "activation " + v + (bytes ? " | bytes " + bytes[i] : ""),
    });
    span.textContent = shownToken(token);
    line.appendChild(span);
  });
  return line;
}
