// Fleet: every GPU as one cell of a canvas heatmap, grouped by node (a 4-wide block per node), coloured by
// the selected metric; nodes opsmedic cordoned or drained are outlined and listed with the incident that
// did it. One canvas draws 10,000 cells in a few milliseconds; the keyboard moves a focus cell.
import { api, announce, badge, cssVar, fmtNum, fmtTime, h } from "../app.js";

const METRICS = [
  { key: "temp", label: "Temperature", unit: "°C", min: 25, max: 95 },
  { key: "util", label: "Utilisation", unit: "%", min: 0, max: 100 },
  { key: "mem", label: "Memory used", unit: "%", min: 0, max: 100 },
  { key: "health", label: "Health state" },
];
const HEALTH_VARS = ["--health-ok", "--health-degraded", "--health-failed", "--health-offline"];
const HEALTH_TEXT = ["OK", "Degraded", "Failed", "Offline"];
// viridis (perceptually uniform, colour-blind safe), 9 stops
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
  [92, 200, 99], [170, 220, 50], [253, 231, 37]];
const LUT = (() => {
  const out = [];
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (VIRIDIS.length - 1);
    const a = Math.floor(x), b = Math.min(VIRIDIS.length - 1, a + 1), f = x - a;
    const c = VIRIDIS[a].map((v, k) => Math.round(v + (VIRIDIS[b][k] - v) * f));
    out.push(`rgb(${c[0]},${c[1]},${c[2]})`);
  }
  return out;
})();

function layout(nNodes, gpn, width) {
  const cols = Math.max(1, Math.min(4, gpn));
  const rows = Math.max(1, Math.ceil(gpn / cols));
  const maxH = Math.max(420, Math.min(900, window.innerHeight - 160));
  for (let s = 30; s >= 3; s--) {
    const gap = s >= 12 ? 2 : 1;
    const label = s >= 14 ? 16 : 0;
    const bw = cols * (s + gap) - gap, bh = rows * (s + gap) - gap + label;
    const gx = s >= 12 ? 14 : Math.max(3, Math.round(s * 0.8)), gy = s >= 12 ? 12 : gx;
    const perRow = Math.max(1, Math.floor((width + gx) / (bw + gx)));
    const height = Math.ceil(nNodes / perRow) * (bh + gy);
    if (height <= maxH || s === 3) return { s, gap, label, cols, rows, bw, bh, gx, gy, perRow, height: Math.max(height, 40) };
  }
  return null;
}

export async function mount(ctx) {
  const { root } = ctx;
  let data = null;
  let metric = "temp";
  let geo = null;
  let focus = -1;
  const params = new URLSearchParams(location.search);
  if (METRICS.some((m) => m.key === params.get("metric"))) metric = params.get("metric");

  const radios = h("fieldset", { class: "metric-picker" }, h("legend", {}, "Colour by"),
    METRICS.map((m) => h("label", { class: "radio" },
      h("input", { type: "radio", name: "metric", value: m.key, checked: m.key === metric,
        onchange: (ev) => { metric = ev.target.value; draw(); announce(`Colouring by ${m.label}`); } }),
      m.label)));
  const counts = h("dl", { class: "counts", "aria-label": "Fleet summary" });
  const legend = h("div", { class: "legend", "aria-hidden": "true" });
  const canvas = h("canvas", { id: "fleet-canvas", tabindex: "0", role: "img",
    "aria-label": "GPU heatmap; use the arrow keys to move between GPUs", "aria-describedby": "fleet-help" });
  const help = h("p", { id: "fleet-help", class: "muted small" },
    "Each block is a node, each cell a GPU. Arrow keys move between GPUs, Enter opens the incident of a marked node. ",
    "Outlined, hatched nodes were taken out of service.");
  const tip = h("div", { class: "tooltip", role: "tooltip", hidden: true });
  const focusText = h("p", { class: "focus-readout", "aria-live": "polite" });
  const wrap = h("div", { class: "heatmap-wrap" }, canvas, tip);
  const marked = h("section", { "aria-labelledby": "marked-h" });
  const attention = h("section", { "aria-labelledby": "attn-h" });
  const when = h("p", { class: "muted small" });
  root.replaceChildren(
    h("div", { class: "fleet-controls" }, radios, counts),
    legend, wrap, focusText, help, when, marked, attention);

  function cellAt(px, py) {
    if (!geo || !data) return -1;
    const { s, gap, label, cols, bw, bh, gx, gy, perRow } = geo;
    const bx = Math.floor(px / (bw + gx)), by = Math.floor(py / (bh + gy));
    if (bx >= perRow) return -1;
    const ni = by * perRow + bx;
    if (ni >= data.nodes.length) return -1;
    const lx = px - bx * (bw + gx), ly = py - by * (bh + gy) - label;
    if (lx < 0 || ly < 0 || lx > bw || ly > bh - label) return -1;
    const c = Math.floor(lx / (s + gap)), r = Math.floor(ly / (s + gap));
    const gi = r * cols + c;
    if (gi >= data.gpus_per_node) return -1;
    return ni * data.gpus_per_node + gi;
  }

  function cellRect(i) {
    const { s, gap, label, cols, bw, bh, gx, gy, perRow } = geo;
    const ni = Math.floor(i / data.gpus_per_node), gi = i % data.gpus_per_node;
    const x0 = (ni % perRow) * (bw + gx), y0 = Math.floor(ni / perRow) * (bh + gy) + label;
    return [x0 + (gi % cols) * (s + gap), y0 + Math.floor(gi / cols) * (s + gap), s, s];
  }

  function describe(i) {
    if (i < 0 || !data) return "";
    const id = data.ids[i];
    const node = data.nodes[Math.floor(i / data.gpus_per_node)];
    if (!id) return `${node.name}: no GPU in this slot`;
    const code = data.health[i];
    const parts = [`${id}: ${HEALTH_TEXT[code]}`];
    if (data.reasons[String(i)]) parts.push(data.reasons[String(i)]);
    parts.push(`temperature ${fmtNum(data.metrics.temp[i], 0, "°C")}`, `utilisation ${fmtNum(data.metrics.util[i], 0, "%")}`,
      `memory ${fmtNum(data.metrics.mem[i], 0, "%")}`);
    if (node.cordoned) parts.push(`node cordoned${node.cordoned_by ? " by " + node.cordoned_by : ""}` +
      (node.incidents.length ? ` (incident ${node.incidents.join(", ")})` : ""));
    if (!node.ready) parts.push("node not ready");
    return parts.join("; ");
  }

  let palette = { health: [], empty: "#888" };

  function colourOf(i) {
    const code = data.health[i];
    if (code === null || code === undefined) return null;
    if (metric === "health") return palette.health[code];
    const v = data.metrics[metric][i];
    if (v === null || v === undefined) return code >= 2 ? palette.health[code] : palette.empty;
    const m = METRICS.find((x) => x.key === metric);
    const k = Math.max(0, Math.min(255, Math.round(((v - m.min) / (m.max - m.min)) * 255)));
    return LUT[k];
  }

  function draw() {
    if (!data) return;
    const t0 = performance.now();
    const cs = getComputedStyle(wrap);
    const width = Math.floor(wrap.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)) || 960;
    geo = layout(data.nodes.length, data.gpus_per_node, width);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(geo.height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${geo.height}px`;
    const c = canvas.getContext("2d", { alpha: false });
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.fillStyle = cssVar("--surface");
    c.fillRect(0, 0, width, geo.height);
    const { s, gap, label, cols, bw, bh, gx, gy, perRow } = geo;
    const gpn = data.gpus_per_node;
    const empty = cssVar("--cell-empty");
    palette = { health: HEALTH_VARS.map(cssVar), empty };
    const hatch = cssVar("--hatch");
    const text = cssVar("--text");
    const outline = cssVar("--mark-cordon");
    const failedInk = cssVar("--failed-ink");
    c.font = "11px system-ui, sans-serif";
    c.textBaseline = "top";
    for (let ni = 0; ni < data.nodes.length; ni++) {
      const node = data.nodes[ni];
      const x0 = (ni % perRow) * (bw + gx), y0 = Math.floor(ni / perRow) * (bh + gy);
      if (label) {
        c.fillStyle = text;
        c.fillText(node.name + (node.cordoned ? " ⊘" : "") + (!node.ready ? " ✕" : ""), x0, y0 + 1, bw + gx - 2);
      }
      for (let gi = 0; gi < gpn; gi++) {
        const i = ni * gpn + gi;
        const x = x0 + (gi % cols) * (s + gap), y = y0 + label + Math.floor(gi / cols) * (s + gap);
        let col = colourOf(i);
        if (col === null) col = empty;
        c.fillStyle = col;
        c.fillRect(x, y, s, s);
        if (data.health[i] === 2 && s >= 6) { // failed: a cross, so that colour is not the only cue
          c.strokeStyle = failedInk; c.lineWidth = s >= 14 ? 2 : 1;
          c.beginPath(); c.moveTo(x + 2, y + 2); c.lineTo(x + s - 2, y + s - 2);
          c.moveTo(x + s - 2, y + 2); c.lineTo(x + 2, y + s - 2); c.stroke();
        }
      }
      if (node.cordoned || !node.ready) {
        const y = y0 + label;
        const hgt = bh - label;
        c.save();
        c.beginPath(); c.rect(x0, y, bw, hgt); c.clip();
        c.strokeStyle = hatch; c.lineWidth = 1;
        c.beginPath();
        for (let d = -hgt; d < bw; d += Math.max(4, s / 2)) { c.moveTo(x0 + d, y + hgt); c.lineTo(x0 + d + hgt, y); }
        c.stroke();
        c.restore();
        c.strokeStyle = outline; c.lineWidth = s >= 12 ? 3 : 2;
        c.strokeRect(x0 - 1.5, y - 1.5, bw + 3, hgt + 3);
      }
    }
    if (focus >= 0 && focus < data.health.length) {
      const [x, y, w, hh] = cellRect(focus);
      c.strokeStyle = cssVar("--focus"); c.lineWidth = 2;
      c.strokeRect(x - 2, y - 2, w + 4, hh + 4);
    }
    const ms = performance.now() - t0;
    canvas.dataset.renderMs = ms.toFixed(1);
    canvas.dataset.cells = String(data.nodes.length * gpn);
    const m = METRICS.find((x) => x.key === metric);
    canvas.setAttribute("aria-label", `GPU heatmap of ${data.counts.gpus} GPUs on ${data.counts.nodes} nodes, coloured by ` +
      `${m.label.toLowerCase()}: ${data.counts.ok} OK, ${data.counts.degraded} degraded, ${data.counts.failed} failed, ` +
      `${data.counts.offline} offline; ${data.counts.cordoned} nodes cordoned. Arrow keys move between GPUs.`);
    drawLegend();
  }

  function drawLegend() {
    const m = METRICS.find((x) => x.key === metric);
    if (metric === "health") {
      legend.replaceChildren(...HEALTH_TEXT.map((t, k) => h("span", { class: "legend-item" },
        h("span", { class: `swatch health-${k}` }), t)),
      h("span", { class: "legend-item" }, h("span", { class: "swatch swatch-cordon" }), "out of service"));
    } else {
      legend.replaceChildren(h("span", { class: "legend-item" }, `${m.min}${m.unit}`),
        h("span", { class: "gradient" }), h("span", { class: "legend-item" }, `${m.max}${m.unit}`),
        h("span", { class: "legend-item" }, h("span", { class: "swatch health-2" }), "failed / not visible"),
        h("span", { class: "legend-item" }, h("span", { class: "swatch swatch-cordon" }), "out of service"));
    }
  }

  function renderLists() {
    const c = data.counts;
    counts.replaceChildren(
      ...[["GPUs", c.gpus], ["Nodes", c.nodes], ["OK", c.ok], ["Degraded", c.degraded], ["Failed", c.failed],
        ["Offline", c.offline], ["Cordoned nodes", c.cordoned]].map(([k, v]) =>
        h("div", { class: `count ${k === "Failed" && v ? "count-bad" : ""}` }, h("dt", {}, k), h("dd", {}, String(v ?? 0)))));
    when.textContent = `Snapshot at ${fmtTime(data.at_s)}.`;
    marked.replaceChildren(h("h2", { id: "marked-h" }, "Nodes out of service"));
    if (!data.marked.length) marked.append(h("p", { class: "muted" }, "Every node is schedulable and ready."));
    else {
      marked.append(h("table", { class: "table" },
        h("thead", {}, h("tr", {}, ["Node", "State", "Actions by opsmedic", "Incident", "Incident outcome"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, data.marked.map((n) => h("tr", {},
          h("th", { scope: "row" }, n.name),
          h("td", {}, [n.cordoned ? "cordoned" : "schedulable", n.ready ? "" : "not ready"].filter(Boolean).join(", ")),
          h("td", {}, n.actions.length ? n.actions.join(", ") : (n.cordoned_by ? `cordoned by ${n.cordoned_by}` : "–")),
          h("td", {}, n.incidents.length ? n.incidents.map((id, k) => [k ? ", " : "",
            h("a", { href: `/console/incidents/${encodeURIComponent(id)}` }, id)]) : "not opsmedic"),
          h("td", {}, n.incident_outcome ? badge(n.incident_outcome) : (n.incident_title || "–")))))));
    }
    attention.replaceChildren(h("h2", { id: "attn-h" }, "GPUs needing attention"));
    if (!data.attention.length) attention.append(h("p", { class: "muted" }, "No GPU reports a problem."));
    else {
      attention.append(h("table", { class: "table" },
        h("thead", {}, h("tr", {}, ["GPU", "Health", "Why", "Temperature", "Utilisation"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, data.attention.map((g) => h("tr", {},
          h("th", { scope: "row" }, g.gpu), h("td", {}, badge(`h-${g.health}`, g.health)), h("td", {}, g.reason),
          h("td", {}, fmtNum(g.temp_c, 0, "°C")), h("td", {}, fmtNum(g.util_pct, 0, "%")))))));
    }
  }

  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const i = cellAt(ev.clientX - r.left, ev.clientY - r.top);
    if (i < 0 || !data.ids[i]) { tip.hidden = true; return; }
    tip.textContent = describe(i);
    tip.hidden = false;
    const x = Math.min(ev.clientX - r.left + 14, r.width - 260);
    tip.style.left = `${Math.max(0, x)}px`;
    tip.style.top = `${ev.clientY - r.top + 14}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (ev) => {
    const r = canvas.getBoundingClientRect();
    const i = cellAt(ev.clientX - r.left, ev.clientY - r.top);
    if (i >= 0) { focus = i; draw(); focusText.textContent = describe(i); }
  });
  canvas.addEventListener("keydown", (ev) => {
    if (!data || !geo) return;
    const gpn = data.gpus_per_node, n = data.nodes.length * gpn;
    if (focus < 0) focus = 0;
    const ni = Math.floor(focus / gpn), gi = focus % gpn;
    let next = focus;
    if (ev.key === "ArrowRight") next = gi % geo.cols < geo.cols - 1 && gi + 1 < gpn ? focus + 1 : Math.min(n - 1, (ni + 1) * gpn);
    else if (ev.key === "ArrowLeft") next = gi % geo.cols > 0 ? focus - 1 : Math.max(0, (ni - 1) * gpn + Math.min(gpn - 1, geo.cols - 1));
    else if (ev.key === "ArrowDown") next = gi + geo.cols < gpn ? focus + geo.cols : Math.min(n - 1, (ni + geo.perRow) * gpn + (gi % geo.cols));
    else if (ev.key === "ArrowUp") next = gi - geo.cols >= 0 ? focus - geo.cols : Math.max(0, (ni - geo.perRow) * gpn + gi + geo.cols * (geo.rows - 1));
    else if (ev.key === "Home") next = 0;
    else if (ev.key === "End") next = n - 1;
    else if (ev.key === "Enter") {
      const node = data.nodes[ni];
      if (node.incidents.length) location.href = `/console/incidents/${encodeURIComponent(node.incidents[0])}`;
      return;
    } else return;
    ev.preventDefault();
    focus = Math.max(0, Math.min(n - 1, next));
    draw();
    focusText.textContent = describe(focus);
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => { window.clearTimeout(resizeTimer); resizeTimer = window.setTimeout(draw, 120); });

  async function refresh() {
    data = await api("/console/api/fleet");
    if (!data.nodes.length) {
      counts.replaceChildren();
      when.textContent = "Waiting for the first snapshot of the cluster…";
      return;
    }
    draw();
    renderLists();
  }
  await refresh();
  return { refresh, themeChanged: draw, render: (d) => { data = d; draw(); renderLists(); } };
}
