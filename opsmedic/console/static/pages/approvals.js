// Approvals: pending requests with Approve / Reject for signed-in approvers (the same ApprovalStore calls as
// Slack and the CLI: bound to the action's digest, refused after expiry, used once, audited), and the
// recently decided ones with who decided and when.
import { api, badge, decisionControls, fmtDuration, fmtTime, h } from "../app.js";

export async function mount({ root }) {
  const pending = h("section", { "aria-labelledby": "pending-h" });
  const recent = h("section", { "aria-labelledby": "recent-h" });
  root.replaceChildren(pending, recent);

  function card(r) {
    return h("article", { class: "approval-card", dataset: { request: r.id }, "aria-labelledby": `req-${r.id}` },
      h("header", {},
        h("h3", { id: `req-${r.id}` }, h("code", {}, r.action_key)),
        badge(`risk-${r.risk}`, `${r.risk} risk`)),
      h("dl", { class: "kv" },
        h("dt", {}, "Incident"), h("dd", {}, h("a", { href: `/console/incidents/${encodeURIComponent(r.incident_id)}` }, r.incident_id),
          r.incident_title ? h("span", { class: "muted small" }, ` — ${r.incident_title}`) : null),
        h("dt", {}, "Policy rule"), h("dd", {}, h("code", {}, r.rule)),
        h("dt", {}, "Approvers"), h("dd", {}, r.approvers.join(", "),
          r.approvals_required > 1 ? ` (${r.approvals_required} needed, ${r.approved_by.length} so far)` : ""),
        h("dt", {}, "Requested"), h("dd", {}, fmtTime(r.requested_at_s)),
        h("dt", {}, "Expires"), h("dd", {}, fmtTime(r.expires_at_s), " ",
          h("span", { class: "muted small expires", dataset: { expires: String(r.expires_in_s) } }, `(in ${fmtDuration(r.expires_in_s)} world time)`)),
        h("dt", {}, "Parameters"), h("dd", {}, h("code", {}, JSON.stringify(r.action.params))),
        h("dt", {}, "Bound to digest"), h("dd", {}, h("code", { title: r.digest }, r.digest.slice(0, 16) + "…"))),
      decisionControls(r, refresh));
  }

  async function refresh(update) {
    if (update && !update.state_changed) return;  // requests change with the state, not with each snapshot
    const data = await api("/console/api/approvals");
    pending.replaceChildren(h("h2", { id: "pending-h" }, `Pending (${data.pending.length})`));
    if (!data.pending.length) pending.append(h("p", { class: "empty" }, "Nothing waits for a human right now."));
    else pending.append(h("div", { class: "cards" }, data.pending.map(card)));
    recent.replaceChildren(h("h2", { id: "recent-h" }, "Recently decided"));
    if (!data.recent.length) recent.append(h("p", { class: "muted" }, "No decision yet."));
    else {
      recent.append(h("div", { class: "table-scroll" }, h("table", { class: "table", id: "recent-table" },
        h("thead", {}, h("tr", {}, ["Request", "Action", "Incident", "Outcome", "Who", "When", "Reason"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, data.recent.map((r) => h("tr", { dataset: { request: r.id } },
          h("th", { scope: "row" }, h("code", {}, r.id)), h("td", {}, h("code", {}, r.action_key)),
          h("td", {}, h("a", { href: `/console/incidents/${encodeURIComponent(r.incident_id)}` }, r.incident_id)),
          h("td", {}, badge(r.status)), h("td", {}, (r.decided_by || r.approved_by).join(", ") || "–"),
          h("td", {}, fmtTime(r.decided_at_s)), h("td", { class: "small" }, r.reason || "–")))))));
    }
  }
  await refresh();
  return { refresh };
}
