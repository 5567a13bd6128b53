// Time-series plots on uPlot (vendored under vendor/uplot), with the fault and each action marked on the
// time axis. One chart per metric; marks are drawn by a uPlot plugin as labelled vertical lines.
import { cssVar, fmtTime, h } from "./app.js";

const MARK_VARS = { fault: "--mark-fault", signal: "--mark-signal", opened: "--mark-opened",
  approval: "--mark-approval", action: "--mark-action", verified: "--mark-verified", failed: "--mark-failed" };

export const MARK_LABELS = { fault: "fault injected", signal: "first signal", opened: "incident opened",
  approval: "approval", action: "action executed", verified: "verified", failed: "failed" };

// Vertical lines at each mark; labels packed greedily into as many rows as the plot has room for (a label
// that finds no room is left out: the legend and the timeline name every mark).
function marksPlugin(st) {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        const { left, top, width, height } = u.bbox;
        const dpr = window.devicePixelRatio || 1;
        const rowH = 14 * dpr;
        const rows = Math.max(1, Math.floor((height * 0.55) / rowH));
        const taken = Array.from({ length: rows }, () => []);  // label intervals per row
        const right = left + width;
        ctx.save();
        ctx.font = `${Math.round(11 * dpr)}px system-ui, sans-serif`;
        ctx.textBaseline = "top";
        ctx.textAlign = "left";  // uPlot leaves the axes' alignment on the context
        const rank = (m) => (m.kind === "fault" ? 0 : m.kind === "signal" ? 1 : 2);
        const sorted = [...st.marks].sort((a, b) => a.at_s - b.at_s || rank(a) - rank(b));
        const xOf = (m) => Math.round(u.valToPos(m.at_s, "x", true));
        const inside = (x) => x >= left - 1 && x <= right + 1;
        // lines first, the fault's last (on top of the actions taken at the same moment)
        for (const m of [...sorted].sort((a, b) => rank(b) - rank(a))) {
          const x = xOf(m);
          if (!inside(x)) continue;
          ctx.strokeStyle = cssVar(MARK_VARS[m.kind] || "--mark-action") || "#888";
          ctx.lineWidth = Math.max(1, (m.kind === "fault" ? 2 : 1.5) * dpr);
          ctx.setLineDash(m.kind === "fault" ? [6 * dpr, 4 * dpr] : m.kind === "signal" ? [2 * dpr, 3 * dpr] : []);
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
        }
        ctx.setLineDash([]);
        for (const m of sorted) {
          const x = xOf(m);
          if (!inside(x)) continue;
          const color = cssVar(MARK_VARS[m.kind] || "--mark-action") || "#888";
          const label = m.label.length > 30 ? m.label.slice(0, 29) + "…" : m.label;
          const tw = ctx.measureText(label).width;
          // beside its line: to the right when it fits, else to the left
          const tx = x + 4 * dpr + tw <= right ? x + 4 * dpr : Math.max(left, x - 4 * dpr - tw);
          const pad = 3 * dpr;
          const row = taken.findIndex((iv) => iv.every(([a, b]) => tx + tw + pad < a || tx - pad > b));
          if (row < 0) continue;
          taken[row].push([tx, tx + tw]);
          const ty = top + 2 * dpr + row * rowH;
          ctx.fillStyle = cssVar("--chart-label-bg") || "rgba(255,255,255,0.85)";
          ctx.fillRect(tx - 2 * dpr, ty - 1 * dpr, tw + 4 * dpr, 13 * dpr);
          ctx.fillStyle = color;
          ctx.fillText(label, tx, ty);
        }
        ctx.restore();
      }],
    },
  };
}

function axisValues(t0IsEpoch) {
  return (u, splits) => splits.map((v) => (t0IsEpoch ? new Date(v * 1000).toLocaleTimeString() : fmtTime(v)));
}

// One uPlot chart of `values` over `t` (or of several `lines`: [{label, values, color}], e.g. a model's
// stable and canary tracks), with `marks`, in `container`. Returns the uPlot instance, with
// `update(t, values or lines' values, marks)` for new readings.
export function lineChart(container, { t, values, lines = null, label, unit, marks = [], color = "--chart-line", height = 210 }) {
  const uPlot = window.uPlot;
  const epoch = t.length > 0 && t[0] > 1e9;
  const text = cssVar("--text-muted");
  const grid = cssVar("--chart-grid");
  const stroke = cssVar(color) || "#1f6feb";
  const width = Math.max(280, Math.floor(container.getBoundingClientRect().width || 480));
  const fmt = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(Math.abs(v) < 10 ? 3 : 1)}${unit ? " " + unit : ""}`);
  // the marks are part of the x range, so that a fault before the first sample is still visible
  const st = { marks, xmin: 0, xmax: 1 };
  const bounds = (xs) => {
    st.xmin = Math.min(...(xs.length ? [xs[0]] : [0]), ...st.marks.map((m) => m.at_s));
    st.xmax = Math.max(...(xs.length ? [xs[xs.length - 1]] : [1]), ...st.marks.map((m) => m.at_s));
  };
  const xs = [...t];
  const many = Array.isArray(lines);
  const ys = many ? lines.map((l) => [...l.values]) : [[...values]];
  bounds(xs);
  const dataSeries = many
    ? lines.map((l) => ({ label: unit ? `${l.label} (${unit})` : l.label, stroke: cssVar(l.color) || stroke, width: 2,
      spanGaps: false, points: { show: xs.length < 40 }, value: (u, v) => fmt(v) }))
    : [{ label: unit ? `${label} (${unit})` : label, stroke, width: 2, spanGaps: false, points: { show: xs.length < 40 },
      value: (u, v) => fmt(v) }];
  const opts = {
    width, height,
    title: "",
    cursor: { drag: { x: true, y: false } },
    legend: { show: true, live: true },
    scales: {
      x: { time: false, range: () => [st.xmin - (st.xmax - st.xmin) * 0.02, st.xmax + (st.xmax - st.xmin) * 0.02 + 1e-9] },
      // headroom above the data: the marks' labels sit there instead of on the line
      y: { range: (u, min, max) => {
        if (min === null || max === null) return [0, 1];
        const span = max - min || Math.abs(max) * 0.1 || 1;
        return [min - span * 0.1, max + span * (st.marks.length ? 0.9 : 0.15)];
      } },
    },
    axes: [
      { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, values: axisValues(epoch), space: 70 },
      { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 56,
        values: (u, splits) => splits.map((v) => (Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(+v.toFixed(3)))) },
    ],
    series: [
      { label: "time", value: (u, v) => (v === null || v === undefined ? "–" : (epoch ? new Date(v * 1000).toLocaleTimeString() : fmtTime(v))) },
      ...dataSeries,
    ],
    plugins: [marksPlugin(st)],
  };
  const plot = new uPlot(opts, [xs, ...ys], container);
  const ro = new ResizeObserver(() => {
    const w = Math.floor(container.getBoundingClientRect().width);
    if (w > 0 && Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height });
  });
  ro.observe(container);
  const destroy = plot.destroy.bind(plot);
  plot.destroy = () => { ro.disconnect(); destroy(); };
  // new readings (and marks) in place: no new chart, no lost zoom on the page around it
  plot.update = (t2, values2, marks2) => {
    if (marks2) st.marks = marks2;
    bounds(t2);
    plot.setData([[...t2], ...(many ? values2.map((v) => [...v]) : [[...values2]])]);
  };
  return plot;
}

// A figure: heading, chart, and a text alternative (the latest value and the range) for screen readers.
export function chartFigure({ t, metric, marks }) {
  const fig = h("figure", { class: "chart" });
  const id = `chart-${metric.name}-${Math.random().toString(36).slice(2, 8)}`;
  const cap = h("figcaption", { id }, metric.unit ? `${metric.label} (${metric.unit})` : metric.label);
  const vals = metric.values.filter((v) => v !== null && v !== undefined);
  const last = metric.values.length ? metric.values[metric.values.length - 1] : null;
  const summary = vals.length
    ? `Latest ${last === null ? "no reading" : last}; range ${Math.min(...vals)} to ${Math.max(...vals)} over ${t.length} samples.`
    : "No readings yet.";
  const box = h("div", { class: "chart-box", role: "img", "aria-labelledby": id, "aria-describedby": `${id}-d` });
  const desc = h("p", { class: "visually-hidden", id: `${id}-d` }, summary);
  fig.append(cap, box, desc);
  return { fig, box };
}

export function markLegend(marks) {
  const kinds = [...new Set(marks.map((m) => m.kind))];
  return h("ul", { class: "mark-legend", "aria-label": "Marks on the time axis" },
    kinds.map((k) => h("li", {}, h("span", { class: `swatch mark-${k}`, "aria-hidden": "true" }), MARK_LABELS[k] || k)));
}
