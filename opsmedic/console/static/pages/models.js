// Models: every registered model with its serving version, SLO status and drift, a plot of its quality and
// latency, and its rollback / retrain history (from the audit log's executions).
import { api, badge, fmtNum, fmtTime, h } from "../app.js";
import { chartFigure, lineChart } from "../charts.js";

export async function mount({ root }) {
  let plots = [];
  let last = null;

  function render(data) {
    for (const p of plots) p.destroy();
    plots = [];
    if (!data.models.length) {
      root.replaceChildren(h("p", { class: "empty" }, data.at_s === null ? "Waiting for the first snapshot…" : "No model is registered in this cluster."));
      return;
    }
    root.replaceChildren(...data.models.map((m) => {
      const grid = h("div", { class: "chart-grid" });
      const card = h("article", { class: "model-card", "aria-labelledby": `m-${m.name}`, dataset: { model: m.name } },
        h("header", {}, h("h2", { id: `m-${m.name}` }, m.name),
          badge(m.slo.ok ? "ok" : "failed", m.slo.ok ? "within SLO" : "SLO breached")),
        h("dl", { class: "kv" },
          h("dt", {}, "Serving version"), h("dd", {}, h("strong", {}, `v${m.serving_version}`), ` of ${m.versions.map((v) => "v" + v).join(", ")}`),
          h("dt", {}, "Previous version"), h("dd", {}, m.previous_version ? `v${m.previous_version}` : "–"),
          h("dt", {}, "Last deploy"), h("dd", {}, fmtTime(m.last_deploy_at_s))),
        h("table", { class: "table compact slo" },
          h("caption", {}, "Service-level objectives"),
          h("thead", {}, h("tr", {}, ["Check", "Now", "Target", "Status"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, m.slo.checks.map((c) => h("tr", {}, h("th", { scope: "row" }, c.name),
            h("td", {}, c.value === null || c.value === undefined ? "–" : fmtNum(c.value, c.name === "latency p95" ? 1 : 3)),
            h("td", {}, c.target), h("td", {}, badge(c.ok ? "ok" : "failed", c.ok ? "ok" : "breached")))))),
        Object.keys(m.drift_psi).length ? h("p", { class: "small" }, "Drift PSI by feature: ",
          Object.entries(m.drift_psi).map(([f, v]) => `${f} ${v.toFixed(3)}`).join(", ")) : null,
        grid,
        h("h3", {}, "Rollbacks, retrains and promotions"),
        m.history.length ? h("table", { class: "table compact" },
          h("thead", {}, h("tr", {}, ["#", "Action", "Parameters", "Outcome", "World time", "Incident"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, m.history.map((e) => h("tr", {}, h("td", {}, String(e.seq)), h("td", {}, h("code", {}, e.action)),
            h("td", {}, h("code", {}, JSON.stringify(e.params))), h("td", {}, badge(e.ok ? "ok" : "failed", e.ok ? (e.dry_run ? "dry run" : "done") : "failed")),
            h("td", {}, fmtTime(e.sim_s)),
            h("td", {}, e.incident_id ? h("a", { href: `/console/incidents/${encodeURIComponent(e.incident_id)}` }, e.incident_id) : "–")))))
          : h("p", { class: "muted" }, "None so far."));
      return card;
    }));
    for (const m of data.models) {
      const card = root.querySelector(`[data-model="${CSS.escape(m.name)}"] .chart-grid`);
      const s = m.series;
      if (!s || !s.t.length) { card.append(h("p", { class: "muted" }, "No readings recorded yet.")); continue; }
      const boxes = s.metrics.map((metric) => {
        const { fig, box } = chartFigure({ t: s.t, metric, marks: [] });
        card.append(fig);
        return box;
      });
      s.metrics.forEach((metric, k) => {
        plots.push(lineChart(boxes[k], { t: s.t, values: metric.values, label: metric.label, unit: metric.unit, height: 150 }));
      });
    }
  }

  let renderedAt = 0;
  async function refresh(update) {
    // the readings move with every snapshot: new points on the same charts every few seconds, and a
    // full re-render when the state changed (a rollback, a retrain) or the models did
    if (update && !update.state_changed && performance.now() - renderedAt < 3000) return;
    const data = await api("/console/api/models");
    renderedAt = performance.now();
    const same = last && !(update && update.state_changed) && plots.length &&
      data.models.map((m) => m.name).join() === last.models.map((m) => m.name).join();
    last = data;
    const charts = data.models.reduce((n, m) => n + (m.series && m.series.t.length ? m.series.metrics.length : 0), 0);
    if (!same || charts !== plots.length) { render(data); return; }
    let k = 0;
    for (const m of data.models) {
      if (!m.series || !m.series.t.length) continue;
      for (const metric of m.series.metrics) {
        if (plots[k]) plots[k].update(m.series.t, metric.values, []);
        k += 1;
      }
    }
  }
  await refresh();
  return { refresh, themeChanged: () => last && render(last) };
}
