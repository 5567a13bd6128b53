// Incidents: the list (open first), and one incident's whole story — metric plots around the fault with each
// action marked, the timeline, the diagnosis with its evidence and runbooks, the plan step by step (the
// governor's decision and rule, approvals who/when, execution, verification) and its audit trail.
import { api, badge, decisionControls, fmtNum, fmtTime, h, incidentBadge } from "../app.js";
import { chartFigure, lineChart, markLegend } from "../charts.js";

const AGENT_TEXT = { monitor: "Monitor", diagnostician: "Diagnostician", remediator: "Remediator",
  governor: "Governor", executor: "Executor", verifier: "Verifier", human: "Human" };

export async function mount(ctx) {
  return ctx.incident ? mountDetail(ctx) : mountList(ctx);
}

// ------------------------------------------------------------------------------------------ list

async function mountList({ root }) {
  let show = "all";
  const filter = h("fieldset", { class: "segmented" }, h("legend", { class: "visually-hidden" }, "Show"),
    ["all", "open"].map((k) => h("label", { class: "radio" },
      h("input", { type: "radio", name: "show", value: k, checked: k === show,
        onchange: (ev) => { show = ev.target.value; refresh(); } }), k === "all" ? "Open and recent" : "Open only")));
  const table = h("div", { id: "incident-list" });
  root.replaceChildren(filter, table);

  async function refresh(update) {
    if (update && !update.state_changed) return;  // a new snapshot alone changes nothing here
    const data = await api("/console/api/incidents");
    const rows = data.incidents.filter((x) => show === "all" || x.outcome === "open");
    if (!rows.length) {
      table.replaceChildren(h("p", { class: "empty" }, show === "open" ? "No open incident." :
        "No incident yet: the monitor opens one when a detector's condition holds long enough."));
      return;
    }
    table.replaceChildren(h("table", { class: "table" },
      h("caption", { class: "visually-hidden" }, "Incidents, open first, newest first"),
      h("thead", {}, h("tr", {}, ["Status", "Incident", "Resource", "Root cause", "Opened", "Latest"].map((x) =>
        h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.map((x) => h("tr", { dataset: { incident: x.id } },
        h("td", {}, incidentBadge(x)),
        h("th", { scope: "row" }, h("a", { href: `/console/incidents/${encodeURIComponent(x.id)}` }, x.id),
          h("div", { class: "muted small" }, x.title)),
        h("td", {}, h("code", {}, x.resource), h("div", { class: "muted small" }, x.resource_kind)),
        h("td", {}, x.root_cause || "–"),
        h("td", {}, fmtTime(x.opened_at_s)),
        h("td", { class: "small" }, x.last))))));
  }
  await refresh();
  return { refresh };
}

// ------------------------------------------------------------------------------------------ detail

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function stepStatus(step) {
  const d = step.decision;
  const a = step.approval;
  const r = step.result;
  const v = step.verification;
  return {
    governor: d ? h("div", {}, badge(d.verdict === "allow" ? "allow" : d.verdict === "deny" ? "deny" : "needs", d.verdict.replace("_", " ")),
      h("div", { class: "small" }, h("code", {}, d.rule)), h("div", { class: "muted small" }, `risk ${d.risk}`),
      d.reasons && d.reasons.length ? h("div", { class: "muted small" }, d.reasons[0]) : null) : "–",
    approval: a ? h("div", {}, badge(a.status),
      a.decided_by ? h("div", { class: "small" }, `by ${a.decided_by}`)
        : a.approved_by && a.approved_by.length ? h("div", { class: "small" }, `by ${a.approved_by.join(", ")}`) : null,
      a.decided_at_s !== null && a.decided_at_s !== undefined ? h("div", { class: "muted small" }, fmtTime(a.decided_at_s)) : null,
      a.status === "pending" ? h("div", { class: "muted small" }, `expires ${fmtTime(a.expires_at_s)}`) : null,
      a.reason ? h("div", { class: "muted small" }, a.reason) : null) : (d && d.verdict === "allow" ? "not needed" : "–"),
    execution: r ? h("div", {}, badge(r.ok ? (r.dry_run ? "dry" : "ok") : "failed", r.ok ? (r.dry_run ? "dry run" : "executed") : "failed"),
      h("div", { class: "muted small" }, fmtTime(r.at_s)), r.detail ? h("div", { class: "small" }, r.detail) : null) : "–",
    verification: v ? h("div", {}, badge(v.ok ? "ok" : "failed", v.ok ? "verified" : "not verified"),
      h("div", { class: "muted small" }, fmtTime(v.at_s)), h("div", { class: "small" }, v.detail)) : "–",
  };
}

async function mountDetail({ root, incident }) {
  const head = h("section", { class: "incident-head", "aria-label": "Summary" });
  const approval = h("section", { class: "callout", hidden: true, "aria-labelledby": "pending-h" });
  const charts = h("section", { "aria-labelledby": "charts-h" });
  const timeline = h("section", { "aria-labelledby": "timeline-h" });
  const diagnosis = h("section", { "aria-labelledby": "diag-h" });
  const plan = h("section", { "aria-labelledby": "plan-h" });
  const audit = h("section", { "aria-labelledby": "audit-h" });
  root.replaceChildren(head, approval, charts,
    h("div", { class: "two-col" }, timeline, h("div", {}, diagnosis)), plan, audit);
  let last = null;
  let plots = [];

  function renderCharts(d) {
    for (const p of plots) p.destroy();
    plots = [];
    const grid = h("div", { class: "chart-grid" });
    charts.replaceChildren(h("h2", { id: "charts-h" }, "Around the fault"),
      h("p", { class: "muted small" }, `Resource ${d.incident.resource} (${d.series ? d.series.kind : "–"}); the world's clock on the time axis.`),
      markLegend(d.marks), grid);
    const s = d.series;
    if (!s || !s.t.length) { grid.append(h("p", { class: "muted" }, "No readings recorded for this resource yet.")); return; }
    // every figure first, then the charts: each chart takes its box's width once the grid is laid out
    const boxes = s.metrics.map((m) => {
      const { fig, box } = chartFigure({ t: s.t, metric: m, marks: d.marks });
      grid.append(fig);
      return box;
    });
    s.metrics.forEach((m, k) => {
      plots.push(lineChart(boxes[k], { t: s.t, values: m.values, label: m.label, unit: m.unit, marks: d.marks }));
    });
  }

  function render(d) {
    const s = d.summary;
    document.getElementById("page-title").textContent = `Incident ${s.id}`;
    document.title = `Incident ${s.id} · opsmedic console`;
    head.replaceChildren(
      h("p", { class: "incident-title" }, incidentBadge(s), " ", s.title),
      kv([["Resource", h("code", {}, d.incident.resource)], ["Kind", d.incident.resource_kind],
        ["Opened", fmtTime(d.incident.opened_at_s)], ["Root cause", s.root_cause || "–"],
        ["Actions done", s.actions.length ? s.actions.join(", ") : "none yet"],
        d.escalation ? ["Escalated", d.escalation] : null]));

    const pending = (d.approvals || []).filter((a) => a.status === "pending");
    approval.hidden = !pending.length;
    if (pending.length) {
      approval.replaceChildren(h("h2", { id: "pending-h" }, "Waiting for approval"),
        ...pending.map((a) => h("div", { class: "pending-inline" },
          h("p", {}, h("strong", {}, `${a.action.name}@${a.action.target}`), ` · risk ${a.risk} · rule `, h("code", {}, a.rule),
            ` · approvers ${a.approvers.join(", ")} · expires ${fmtTime(a.expires_at_s)}`),
          decisionControls({ ...a, action_key: `${a.action.name}@${a.action.target}`,
            can_act: false, ...(last && last.canAct ? last.canAct[a.id] : {}) }, refresh))));
    }

    // the signals and the agents' entries in one order of time (a signal first at the same moment)
    const entries = [
      ...d.incident.signals.map((sg) => ({ at_s: sg.at_s, agent: "signal", label: "Signal",
        text: `${sg.kind} on ${sg.resource}${sg.detail ? " — " + sg.detail : ""}` })),
      ...d.timeline.map((e) => ({ at_s: e.at_s, agent: e.agent, label: AGENT_TEXT[e.agent] || e.agent, text: e.text })),
    ].map((e, i) => ({ ...e, i })).sort((a, b) => a.at_s - b.at_s || a.i - b.i);
    timeline.replaceChildren(h("h2", { id: "timeline-h" }, "Timeline"),
      h("ol", { class: "timeline", id: "timeline" }, entries.map((e) => h("li", { dataset: { agent: e.agent } },
        h("span", { class: "tl-time" }, fmtTime(e.at_s)),
        h("span", { class: `tl-agent agent-${e.agent}` }, e.label),
        h("span", { class: "tl-text" }, e.text)))));

    const dg = d.diagnosis;
    diagnosis.replaceChildren(h("h2", { id: "diag-h" }, "Diagnosis"));
    if (!dg) diagnosis.append(h("p", { class: "muted" }, "Not diagnosed yet."));
    else {
      diagnosis.append(
        kv([["Root cause", h("strong", {}, dg.root_cause)], ["Confidence", fmtNum(dg.confidence * 100, 0, "%")],
          ["Source", dg.source]]),
        h("p", {}, dg.summary),
        h("h3", {}, "Evidence"),
        dg.evidence.length ? h("ul", { class: "evidence" }, dg.evidence.map((e) => h("li", {},
          h("code", {}, e.kind), " on ", h("code", {}, e.resource), `: ${e.detail}`,
          e.value !== null && e.value !== undefined ? ` (${e.value})` : ""))) : h("p", { class: "muted" }, "none recorded"),
        h("h3", {}, "Runbooks cited"),
        dg.runbooks.length ? h("ul", { class: "runbooks" }, dg.runbooks.map((r) => h("li", {},
          h("code", {}, r.id), r.title ? ` — ${r.title}` : ""))) : h("p", { class: "muted" }, "none"));
    }

    plan.replaceChildren(h("h2", { id: "plan-h" }, "Plan, decisions and what became of each step"));
    if (!d.plan) plan.append(h("p", { class: "muted" }, "No plan yet."));
    else {
      if (d.plan.rationale) plan.append(h("p", {}, d.plan.rationale));
      plan.append(h("div", { class: "table-scroll" }, h("table", { class: "table", id: "plan-table" },
        h("thead", {}, h("tr", {}, ["#", "Action", "Why", "Governor", "Approval", "Execution", "Verification"].map((x) =>
          h("th", { scope: "col" }, x)))),
        h("tbody", {}, d.plan.steps.map((st) => {
          const ss = stepStatus(st);
          return h("tr", { class: st.current ? "current" : "", dataset: { action: st.action } },
            h("td", {}, String(st.n)), h("th", { scope: "row" }, h("code", {}, st.action),
              st.runbook_id ? h("div", { class: "muted small" }, `runbook ${st.runbook_id}`) : null),
            h("td", { class: "small" }, st.why || "–"), h("td", {}, ss.governor), h("td", { class: "approval-cell" }, ss.approval),
            h("td", { class: "exec-cell" }, ss.execution), h("td", { class: "verify-cell" }, ss.verification));
        })))));
    }

    audit.replaceChildren(h("h2", { id: "audit-h" }, "Audit trail"),
      h("p", {}, h("a", { href: `/console/audit?incident=${encodeURIComponent(d.incident.id)}` }, "Open in the audit log")),
      h("div", { class: "table-scroll" }, h("table", { class: "table compact" },
        h("thead", {}, h("tr", {}, ["#", "Kind", "World time", "Summary"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, d.audit.map((e) => h("tr", {}, h("td", {}, String(e.seq)), h("td", {}, h("code", {}, e.kind)),
          h("td", {}, fmtTime(e.sim_s)), h("td", { class: "small" }, e.summary)))))));
  }

  let chartsAt = 0;
  // a new snapshot alone: new readings on the same charts, at most every two seconds
  function updateCharts(d) {
    const s = d.series;
    if (!s || plots.length !== s.metrics.length || !last) { renderCharts(d); return; }
    s.metrics.forEach((m, k) => plots[k].update(s.t, m.values, d.marks));
  }

  async function refresh(update) {
    const snapshotOnly = update && !update.state_changed;
    if (snapshotOnly && performance.now() - chartsAt < 2000) return;
    let d;
    try {
      d = await api(`/console/api/incidents/${encodeURIComponent(incident)}`);
    } catch (e) {
      root.replaceChildren(h("p", { class: "form-error" }, e.status === 404 ? `No incident ${incident}.` : e.message),
        h("p", {}, h("a", { href: "/console/incidents" }, "All incidents")));
      return;
    }
    // who may act on which pending request: the approvals endpoint knows the signed-in user
    const canAct = {};
    if (!snapshotOnly && (d.approvals || []).some((a) => a.status === "pending")) {
      const ap = await api("/console/api/approvals");
      for (const r of ap.pending) canAct[r.id] = { can_act: r.can_act };
    }
    chartsAt = performance.now();
    if (snapshotOnly && last) {
      last = { ...last, d };
      updateCharts(d);
      return;
    }
    last = { d, canAct };
    render(d);
    renderCharts(d);
  }
  await refresh();
  return { refresh, themeChanged: () => last && renderCharts(last.d) };
}
