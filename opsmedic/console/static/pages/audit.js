// Audit: the hash-chained audit log, searchable, with the chain's verification (AuditLog.verify()).
import { api, fmtTime, h } from "../app.js";

export async function mount({ root }) {
  const params = new URLSearchParams(location.search);
  const state = { q: params.get("q") || "", kind: params.get("kind") || "", incident: params.get("incident") || "",
    offset: 0, limit: 100 };
  const banner = h("div", { id: "chain", class: "chain", role: "status" });
  const q = h("input", { id: "audit-q", type: "search", value: state.q, placeholder: "drain_node, U0OPSMEDIC, node-1…" });
  const kind = h("select", { id: "audit-kind" }, h("option", { value: "" }, "any kind"));
  const inc = h("input", { id: "audit-incident", type: "text", value: state.incident, placeholder: "inc-…", spellcheck: "false" });
  const form = h("form", { class: "search", role: "search" },
    h("div", { class: "field" }, h("label", { for: "audit-q" }, "Search"), q),
    h("div", { class: "field" }, h("label", { for: "audit-kind" }, "Kind"), kind),
    h("div", { class: "field" }, h("label", { for: "audit-incident" }, "Incident"), inc),
    h("button", { class: "btn btn-primary", type: "submit" }, "Search"));
  const count = h("p", { class: "muted small", "aria-live": "polite" });
  const table = h("div", { class: "table-scroll" });
  const pager = h("nav", { class: "pager", "aria-label": "Audit pages" });
  root.replaceChildren(banner, form, count, table, pager);

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.q = q.value; state.kind = kind.value; state.incident = inc.value.trim(); state.offset = 0;
    const u = new URLSearchParams();
    for (const k of ["q", "kind", "incident"]) if (state[k]) u.set(k, state[k]);
    history.replaceState(null, "", `${location.pathname}${u.toString() ? "?" + u : ""}`);
    refresh();
  });

  async function refresh(update) {
    // live updates only move the first page, and never under someone typing a search
    if (update && (!update.state_changed || state.offset > 0 || document.activeElement === q ||
      document.activeElement === inc)) return;
    const u = new URLSearchParams({ q: state.q, kind: state.kind, incident: state.incident,
      limit: String(state.limit), offset: String(state.offset) });
    const d = await api(`/console/api/audit?${u}`);
    const v = d.verification;
    banner.className = `chain ${v.ok ? "chain-ok" : "chain-bad"}`;
    banner.replaceChildren(v.ok
      ? h("p", {}, h("strong", {}, "Chain intact"), ` — ${v.count} entries verified; head hash `, h("code", {}, (v.head_hash || "").slice(0, 16) || "–"))
      : h("p", {}, h("strong", {}, `Chain broken at entry #${v.first_bad_seq}`), ` — ${v.reason}`));
    const kinds = Object.keys(d.kinds);
    kind.replaceChildren(h("option", { value: "" }, "any kind"),
      ...kinds.map((k) => h("option", { value: k, selected: k === state.kind }, `${k} (${d.kinds[k]})`)));
    count.textContent = `${d.matched} of ${d.total} entries match; showing ${d.entries.length ? state.offset + 1 : 0}–${state.offset + d.entries.length}, newest first.`;
    table.replaceChildren(h("table", { class: "table compact", id: "audit-table" },
      h("thead", {}, h("tr", {}, ["#", "Recorded (UTC)", "World time", "Incident", "Kind", "Summary", "Hash"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, d.entries.map((e) => h("tr", { class: !v.ok && e.seq >= v.first_bad_seq ? "bad" : "" },
        h("td", {}, String(e.seq)), h("td", { class: "nowrap" }, e.at.slice(0, 19).replace("T", " ")), h("td", { class: "nowrap" }, fmtTime(e.sim_s)),
        h("td", {}, e.incident_id ? h("a", { href: `/console/incidents/${encodeURIComponent(e.incident_id)}` }, e.incident_id) : "–"),
        h("td", {}, h("code", {}, e.kind)), h("td", { class: "small" }, e.summary), h("td", {}, h("code", { class: "small" }, e.hash)))))));
    pager.replaceChildren(
      h("button", { class: "btn", type: "button", disabled: state.offset === 0,
        onclick: () => { state.offset = Math.max(0, state.offset - state.limit); refresh(); } }, "Newer"),
      h("button", { class: "btn", type: "button", disabled: state.offset + state.limit >= d.matched,
        onclick: () => { state.offset += state.limit; refresh(); } }, "Older"));
  }
  await refresh();
  return { refresh };
}
