// Models: every registered model with its serving version, its traffic tracks (stable and canary, while a
// rollout runs), SLO status, data validation (and the retrain block a failed check sets), plots of traffic
// share, error rate and request rate per track and of quality and latency, each with what was done to the
// model marked on the time axis (an aborted canary, a rollback), and its history (from the audit log).
import { api, badge, fmtNum, fmtTime, h } from "../app.js";
import { chartFigure, lineChart, markLegend } from "../charts.js";

const TRACK_COLORS = { stable: "--chart-line", canary: "--chart-line-2" };
const pct = (v, digits = 2) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(digits)} %`);
const num = (v, digits = 1, unit = "") => (v === null || v === undefined ? "–" : fmtNum(v, digits, unit));

function sloValue(c) {
  if (c.value === null || c.value === undefined) return "–";
  if (c.name === "error rate") return pct(c.value);
  return fmtNum(c.value, c.name === "latency p95" ? 1 : 3);
}

// the rollout in words: a canary at its share now, or the last abort / promotion the audit log holds
function rolloutState(m) {
  const canary = m.tracks && m.tracks.canary;
  if (canary && canary.traffic_pct > 0) return badge("open", `canary v${canary.version} at ${fmtNum(canary.traffic_pct, 0)} %`);
  const abort = m.history.find((e) => e.action === "abort_rollout" && e.ok && !e.dry_run);
  if (abort) return badge("failed", `canary aborted at ${fmtTime(abort.sim_s)}`);
  return null;
}

function tracksTable(m) {
  const names = Object.keys(m.tracks || {});
  if (!names.length) return h("p", { class: "muted" }, "No rollout in progress: one version takes all traffic.");
  return h("div", { class: "table-scroll" }, h("table", { class: "table compact tracks", id: `tracks-${m.name}` },
    h("caption", {}, "Traffic tracks now"),
    h("thead", {}, h("tr", {}, ["Track", "Version", "Traffic", "Accuracy", "Latency p95", "Error rate", "Requests/s"].map((x) =>
      h("th", { scope: "col" }, x)))),
    h("tbody", {}, names.sort().reverse().map((n) => {
      const t = m.tracks[n];
      // a track's reading outside the model's SLO is flagged where it stands (the canary's own failure)
      const flag = (text, bad) => (bad ? badge("failed", text) : text);
      const over = (v, lim, above) => v !== null && v !== undefined && lim !== null && lim !== undefined && (above ? v > lim : v < lim);
      return h("tr", { dataset: { track: n } }, h("th", { scope: "row" }, n), h("td", {}, `v${t.version}`),
        h("td", {}, `${fmtNum(t.traffic_pct, 0)} %`),
        h("td", {}, flag(num(t.accuracy, 3), over(t.accuracy, m.slo_accuracy_min, false))),
        h("td", {}, flag(num(t.latency_p95_ms, 1, " ms"), over(t.latency_p95_ms, m.slo_latency_p95_ms, true))),
        h("td", {}, flag(pct(t.error_rate), over(t.error_rate, m.slo_error_rate_max, true))),
        h("td", {}, num(t.requests_per_s, 0)));
    }))));
}

function validationBlock(m) {
  const v = m.validation;
  const out = [h("h3", {}, "Data validation")];
  if (v.ok) {
    out.push(h("p", { class: "block-note ok" }, "The current input window passes validation against the reference profile ",
      "(null share, range, type, cardinality). Retraining is allowed."));
  } else {
    out.push(h("table", { class: "table compact", id: `validation-${m.name}` },
      h("caption", {}, "Failed checks (current window vs reference profile)"),
      h("thead", {}, h("tr", {}, ["Feature", "Check that failed"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, v.failed.map((f) => h("tr", {}, h("th", { scope: "row" }, h("code", {}, f.feature)), h("td", {}, f.check))))));
    out.push(h("p", { class: "block-note", dataset: { retrain: "blocked" } }, h("strong", {}, "Retraining blocked"),
      " by governor rule ", h("code", {}, v.retrain_block.rule),
      ": a model retrained on rows that fail validation would learn the break. Lifted when the window validates again."));
  }
  if (v.retrain_block.denials.length) {
    out.push(h("ul", { class: "small" }, v.retrain_block.denials.map((d) => h("li", {},
      `#${d.seq} ${fmtTime(d.sim_s)}: retrain_model denied (rule `, h("code", {}, d.rule || "?"), `) ${d.reason || ""}`))));
  }
  return out;
}

export async function mount({ root }) {
  let plots = [];
  let last = null;

  // one entry per chart, in the order they are drawn: how to feed it new readings
  function chartsOf(m) {
    const out = [];
    const tr = m.series && m.series.tracks;
    if (tr && tr.t.length) {
      for (const g of tr.metrics) {
        // a canary line with no reading at all (no rollout seen yet) is left out, not drawn empty
        const lines = g.lines.filter((l) => l.track === "stable" || l.values.some((x) => x !== null));
        out.push({ t: tr.t, metric: { name: g.name, label: g.label, unit: g.unit, values: lines[0].values },
          lines: lines.map((l) => ({ label: l.track, values: l.values, color: TRACK_COLORS[l.track] })) });
      }
    }
    const s = m.series;
    if (s && s.t.length) for (const metric of s.metrics) out.push({ t: s.t, metric, lines: null });
    return out;
  }

  function render(data) {
    for (const p of plots) p.destroy();
    plots = [];
    if (!data.models.length) {
      root.replaceChildren(h("p", { class: "empty" }, data.at_s === null ? "Waiting for the first snapshot…" : "No model is registered in this cluster."));
      return;
    }
    root.replaceChildren(...data.models.map((m) => {
      const grid = h("div", { class: "chart-grid" });
      return h("article", { class: "model-card", "aria-labelledby": `m-${m.name}`, dataset: { model: m.name } },
        h("header", {}, h("h2", { id: `m-${m.name}` }, m.name),
          h("span", {}, rolloutState(m), " ", badge(m.slo.ok ? "ok" : "failed", m.slo.ok ? "within SLO" : "SLO breached"))),
        h("div", { class: "model-cols" },
          h("dl", { class: "kv" },
            h("dt", {}, "Serving version"), h("dd", {}, h("strong", {}, `v${m.serving_version}`), ` of ${m.versions.map((v) => "v" + v).join(", ")}`),
            h("dt", {}, "Previous version"), h("dd", {}, m.previous_version ? `v${m.previous_version}` : "–"),
            h("dt", {}, "Last deploy"), h("dd", {}, fmtTime(m.last_deploy_at_s)),
            m.workload ? h("dt", {}, "Served by") : null,
            m.workload ? h("dd", {}, h("code", {}, m.workload), m.replicas_ready !== null ? ` · ${m.replicas_ready} replica(s) ready` : "",
              m.capacity_qps ? ` · ${fmtNum(m.capacity_qps, 0)} req/s each` : "") : null,
            h("dt", {}, "Requests"), h("dd", {}, m.requests_per_s === null ? "–" : `${fmtNum(m.requests_per_s, 0)} req/s`),
            h("dt", {}, "Label delay"), h("dd", {}, m.label_delay_s ? `${fmtNum(m.label_delay_s / 60, 0)} min (accuracy is that of older predictions)` : "none")),
          h("table", { class: "table compact slo" },
            h("caption", {}, "Service-level objectives"),
            h("thead", {}, h("tr", {}, ["Check", "Now", "Target", "Status"].map((x) => h("th", { scope: "col" }, x)))),
            h("tbody", {}, m.slo.checks.map((c) => h("tr", {}, h("th", { scope: "row" }, c.name),
              h("td", {}, sloValue(c)), h("td", {}, c.target), h("td", {}, badge(c.ok ? "ok" : "failed", c.ok ? "ok" : "breached"))))))),
        tracksTable(m),
        m.canary_analysis ? h("p", { class: "block-note", id: `analysis-${m.name}` }, h("strong", {}, "Canary analysis failed"),
          ` (audit #${m.canary_analysis.seq}, ${fmtTime(m.canary_analysis.sim_s)}): ${m.canary_analysis.detail}`,
          m.slo_error_rate_max !== null ? ` — SLO: error rate ≤ ${pct(m.slo_error_rate_max)}` : "",
          m.slo_latency_p95_ms !== null ? `, latency p95 ≤ ${fmtNum(m.slo_latency_p95_ms, 0)} ms` : "", ".") : null,
        Object.keys(m.drift_psi).length ? h("p", { class: "small" }, "Drift PSI by feature: ",
          Object.entries(m.drift_psi).map(([f, v]) => `${f} ${v.toFixed(3)}`).join(", ")) : null,
        ...validationBlock(m),
        h("h3", {}, "Over time"),
        m.marks.length ? markLegend(m.marks) : null,
        grid,
        h("h3", {}, "Aborts, rollbacks, retrains, promotions and scaling"),
        m.history.length ? h("div", { class: "table-scroll" }, h("table", { class: "table compact", id: `history-${m.name}` },
          h("thead", {}, h("tr", {}, ["#", "Action", "Parameters", "Outcome", "World time", "Incident"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, m.history.map((e) => h("tr", { dataset: { action: e.action } }, h("td", {}, String(e.seq)), h("td", {}, h("code", {}, e.action)),
            h("td", {}, h("code", {}, JSON.stringify(e.params))), h("td", {}, badge(e.ok ? "ok" : "failed", e.ok ? (e.dry_run ? "dry run" : "done") : "failed")),
            h("td", {}, fmtTime(e.sim_s)),
            h("td", {}, e.incident_id ? h("a", { href: `/console/incidents/${encodeURIComponent(e.incident_id)}` }, e.incident_id) : "–"))))))
          : h("p", { class: "muted" }, "None so far."));
    }));
    for (const m of data.models) {
      const grid = root.querySelector(`[data-model="${CSS.escape(m.name)}"] .chart-grid`);
      const charts = chartsOf(m);
      if (!charts.length) { grid.append(h("p", { class: "muted" }, "No readings recorded yet.")); continue; }
      // every figure first, then the charts: each chart takes its box's width once the grid is laid out
      const boxes = charts.map((c) => {
        const { fig, box } = chartFigure({ t: c.t, metric: c.metric, marks: m.marks });
        fig.dataset.metric = c.metric.name;
        grid.append(fig);
        return box;
      });
      charts.forEach((c, k) => {
        plots.push(lineChart(boxes[k], { t: c.t, values: c.metric.values, lines: c.lines, label: c.metric.label,
          unit: c.metric.unit, marks: m.marks, height: 170 }));
      });
    }
  }

  let renderedAt = 0;
  async function refresh(update) {
    // the readings move with every snapshot: new points on the same charts every few seconds, and a
    // full re-render when the state changed (an abort, a rollback, a retrain) or the models did
    if (update && !update.state_changed && performance.now() - renderedAt < 3000) return;
    const data = await api("/console/api/models");
    renderedAt = performance.now();
    const same = last && !(update && update.state_changed) && plots.length &&
      data.models.map((m) => m.name).join() === last.models.map((m) => m.name).join();
    last = data;
    const charts = data.models.map(chartsOf);
    const count = charts.reduce((n, c) => n + c.length, 0);
    if (!same || count !== plots.length) { render(data); return; }
    let k = 0;
    data.models.forEach((m, i) => {
      for (const c of charts[i]) {
        if (plots[k]) plots[k].update(c.t, c.lines ? c.lines.map((l) => l.values) : c.metric.values, m.marks);
        k += 1;
      }
    });
  }
  await refresh();
  return { refresh, themeChanged: () => last && render(last) };
}
