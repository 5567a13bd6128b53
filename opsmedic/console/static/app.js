// opsmedic console: the shell every page shares — API calls with CSRF, sign-in, theme, live updates (SSE),
// then the page module (pages/<name>.js) renders into #page. No build step: plain ES modules.
// Everything from the server is inserted as text (h() below), never as HTML.

const CSRF_COOKIE = "opsmedic_csrf";
const THEMES = ["auto", "light", "dark"];

// ------------------------------------------------------------------------------------------ helpers

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return null;
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = cookie(CSRF_COOKIE) || "";
  }
  const resp = await fetch(path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const msg = (data && (data.error || data.detail)) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, typeof msg === "string" ? msg : JSON.stringify(msg));
  }
  return data;
}

// Simulated seconds read as T+h:mm:ss; epoch seconds (a real cluster) as local date and time.
export function fmtTime(s) {
  if (s === null || s === undefined) return "–";
  if (s > 1e9) return new Date(s * 1000).toLocaleString();
  const n = Math.max(0, Math.round(s));
  const hh = Math.floor(n / 3600), mm = Math.floor((n % 3600) / 60), ss = n % 60;
  return `T+${hh}:${String(mm).padStart(2, "0")}:${String(ss).padStart(2, "0")}`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  const neg = s < 0; s = Math.abs(Math.round(s));
  const d = s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
    : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  return neg ? `-${d}` : d;
}

export function fmtNum(v, digits = 1, unit = "") {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return `${Number(v).toFixed(digits)}${unit ? " " + unit : ""}`;
}

const OUTCOME_TEXT = { open: "Open", resolved: "Resolved", escalated: "Escalated", failed: "Failed",
  awaiting: "Awaiting approval", pending: "Pending", approved: "Approved", rejected: "Rejected",
  expired: "Expired", consumed: "Approved · used" };

export function badge(kind, text) {
  return h("span", { class: `badge badge-${kind}` }, text || OUTCOME_TEXT[kind] || kind);
}

export function incidentBadge(summary) {
  if (summary.outcome === "open" && summary.waiting === "approval") return badge("awaiting");
  return badge(summary.outcome);
}

export function announce(text) {
  const el = document.getElementById("announcer");
  el.textContent = "";
  window.setTimeout(() => { el.textContent = text; }, 30);
}

let toastTimer = 0;
export function toast(text, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = `toast toast-${kind}`;
  el.hidden = false;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => { el.hidden = true; }, 6000);
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// ------------------------------------------------------------------------------------------ session

export const session = { signedIn: false, user: null, method: "token", available: true, listeners: [] };

async function loadSession() {
  const s = await api("/console/api/session");
  session.signedIn = s.signed_in; session.user = s.user; session.method = s.method;
  session.available = s.sign_in_available;
  renderWho();
  for (const fn of session.listeners) fn(session);
}

function renderWho() {
  const who = document.getElementById("who");
  const open = document.getElementById("signin-open");
  const out = document.getElementById("signout");
  who.textContent = session.signedIn ? `Signed in as ${session.user}` : "Viewing";
  open.hidden = session.signedIn;
  out.hidden = !session.signedIn;
  document.body.dataset.signedIn = session.signedIn ? "yes" : "no";
}

export function openSignIn() {
  const dlg = document.getElementById("signin-dialog");
  document.getElementById("signin-error").textContent =
    session.available ? "" : "No API tokens are configured on this daemon (OPSMEDIC_API_TOKENS).";
  dlg.showModal();
  document.getElementById("signin-token").focus();
}

function wireSession() {
  const dlg = document.getElementById("signin-dialog");
  document.getElementById("signin-open").addEventListener("click", openSignIn);
  document.getElementById("signin-cancel").addEventListener("click", () => dlg.close());
  document.getElementById("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("signin-token");
    const err = document.getElementById("signin-error");
    err.textContent = "";
    try {
      await api("/console/api/session", { method: "POST", body: { token: input.value } });
      input.value = "";
      dlg.close();
      await loadSession();
      announce(`Signed in as ${session.user}`);
    } catch (e) {
      err.textContent = e.status === 401 ? "That token is not known." : e.message;
      input.focus();
    }
  });
  document.getElementById("signout").addEventListener("click", async () => {
    try { await api("/console/api/logout", { method: "POST", body: {} }); } catch (e) { toast(e.message, "error"); }
    await loadSession();
    announce("Signed out");
  });
}

// ------------------------------------------------------------------------------------------ approvals

// Approve or reject one request (shared by the approvals page and the incident page).
export async function decide(req, decision, reason) {
  const body = { decision, digest: req.digest };
  if (reason) body.reason = reason;
  const out = await api(`/console/api/approvals/${encodeURIComponent(req.id)}`, { method: "POST", body });
  const verb = decision === "approve" ? "Approved" : "Rejected";
  announce(`${verb} ${req.action_key || req.id}`);
  toast(`${verb} ${req.action_key || req.id}: the incident resumes.`, "ok");
  return out;
}

export function askReject(req) {
  return new Promise((resolve) => {
    const dlg = document.getElementById("reject-dialog");
    const form = document.getElementById("reject-form");
    const reason = document.getElementById("reject-reason");
    document.getElementById("reject-what").textContent = `${req.action_key || req.id} (request ${req.id})`;
    document.getElementById("reject-error").textContent = "";
    reason.value = "";
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      document.getElementById("reject-cancel").removeEventListener("click", onCancel);
      dlg.close();
      resolve(value);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      if (!reason.value.trim()) { document.getElementById("reject-error").textContent = "Say why."; return; }
      done(reason.value.trim());
    };
    const onCancel = () => done(null);
    form.addEventListener("submit", onSubmit);
    document.getElementById("reject-cancel").addEventListener("click", onCancel);
    dlg.showModal();
    reason.focus();
  });
}

// The Approve / Reject controls for one request, or why there are none.
export function decisionControls(req, after) {
  const wrap = h("div", { class: "decision", dataset: { request: req.id } });
  if (req.status !== "pending") return wrap;
  if (!session.signedIn) {
    wrap.append(h("button", { class: "btn", type: "button", onclick: openSignIn }, "Sign in to approve"));
    return wrap;
  }
  if (!req.can_act) {
    const why = req.approved_by && req.approved_by.includes(session.user)
      ? "You already approved this request; another approver must agree."
      : `You (${session.user}) are not an approver of this request. Approvers: ${(req.approvers || []).join(", ")}.`;
    wrap.append(h("p", { class: "muted" }, why));
    return wrap;
  }
  const label = req.action_key || req.id;
  const approve = h("button", { class: "btn btn-primary", type: "button", "data-action": "approve",
    "aria-label": `Approve ${label}` }, "Approve");
  const reject = h("button", { class: "btn btn-danger", type: "button", "data-action": "reject",
    "aria-label": `Reject ${label}` }, "Reject");
  const busy = (on) => { approve.disabled = on; reject.disabled = on; };
  approve.addEventListener("click", async () => {
    busy(true);
    try { await decide(req, "approve"); } catch (e) { toast(`Not approved: ${e.message}`, "error"); }
    busy(false);
    if (after) after();
  });
  reject.addEventListener("click", async () => {
    const reason = await askReject(req);
    if (reason === null) return;
    busy(true);
    try { await decide(req, "reject", reason); } catch (e) { toast(`Not rejected: ${e.message}`, "error"); }
    busy(false);
    if (after) after();
  });
  wrap.append(approve, reject);
  return wrap;
}

// ------------------------------------------------------------------------------------------ theme

function currentTheme() {
  try { return window.localStorage.getItem("opsmedic-theme") || "auto"; } catch (e) { return "auto"; }
}

export function effectiveTheme() {
  const t = currentTheme();
  if (t !== "auto") return t;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

const themeListeners = [];
export function onThemeChange(fn) { themeListeners.push(fn); }

function applyTheme(t) {
  if (t === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", t);
  const label = { auto: "Auto", light: "Light", dark: "Dark" }[t];
  document.getElementById("theme-label").textContent = label;
  document.getElementById("theme-icon").textContent = { auto: "◐", light: "☀", dark: "☾" }[t];
  document.getElementById("theme-toggle").setAttribute("aria-label",
    t === "auto" ? "Colour theme: follow the system (click for light)" : `Colour theme: ${label} (click to change)`);
  document.body.dataset.theme = effectiveTheme();
  for (const fn of themeListeners) fn(effectiveTheme());
}

function wireTheme() {
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
    try { window.localStorage.setItem("opsmedic-theme", next); } catch (e) { /* private mode */ }
    applyTheme(next);
    announce(`Theme: ${next}`);
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme(currentTheme()));
  applyTheme(currentTheme());
}

// ------------------------------------------------------------------------------------------ world + live

async function renderWorld() {
  try {
    const o = await api("/console/api/overview");
    const w = o.world || {};
    const el = document.getElementById("world-status");
    el.replaceChildren(...[
      h("span", { class: "pill" }, w.kind === "sandbox" ? `sandbox · ${w.scenario}` : (w.kind || "cluster")),
      h("span", { class: "pill", title: "the world's clock" }, fmtTime(o.now_s)),
      w.speed ? h("span", { class: "pill", title: "simulated seconds per wall second" }, `×${w.speed}`) : null,
      w.role ? h("span", { class: `pill ${w.role === "leader" ? "" : "pill-warn"}` }, w.role) : null,
      h("a", { class: "pill pill-link", href: "/console/incidents" }, `${o.open_incidents} open`),
      h("a", { class: `pill pill-link ${o.pending_approvals ? "pill-attn" : ""}`, href: "/console/approvals" },
        `${o.pending_approvals} to approve`),
    ].filter(Boolean));
  } catch (e) { /* the header is best effort */ }
}

function connectLive(onUpdate) {
  const status = document.getElementById("live-status");
  let es = null;
  const open = () => {
    es = new EventSource("/console/events");
    es.addEventListener("open", () => { status.textContent = "live: updates stream in"; document.body.dataset.live = "yes"; });
    es.addEventListener("error", () => { status.textContent = "live updates reconnecting…"; document.body.dataset.live = "no"; });
    es.addEventListener("update", (ev) => {
      let data = {};
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      onUpdate(data);
    });
  };
  open();
  window.addEventListener("beforeunload", () => { if (es) es.close(); });
}

// ------------------------------------------------------------------------------------------ boot

async function boot() {
  wireTheme();
  wireSession();
  const root = document.getElementById("page");
  const page = document.body.dataset.page;
  const ctx = { root, page, incident: document.body.dataset.incident || null, session };
  try { await loadSession(); } catch (e) { toast(`Cannot reach the daemon: ${e.message}`, "error"); }
  // A daemon without public reads serves its data to signed-in users only: ask for the token first, and
  // mount the page once signed in.
  if (!session.signedIn) {
    try { await api("/console/api/overview"); } catch (e) {
      if (e.status === 401) {
        root.replaceChildren(h("p", { class: "muted" },
          "Sign in to see the console: this daemon shows its incidents, approvals and audit log to signed-in users only."));
        root.setAttribute("aria-busy", "false");
        session.listeners.push(() => { if (session.signedIn) window.location.reload(); });
        openSignIn();
        return;
      }
    }
  }
  let mod;
  try {
    mod = await import(`./pages/${page}.js`);
  } catch (e) {
    root.replaceChildren(h("p", { class: "form-error" }, `This page failed to load: ${e.message}`));
    return;
  }
  const view = await mod.mount(ctx);
  root.setAttribute("aria-busy", "false");
  session.listeners.push(() => view.refresh({ state_changed: true, session: true }));
  onThemeChange(() => { if (view.themeChanged) view.themeChanged(); });
  renderWorld();
  // Live updates: at most one refresh in flight; state changes go at once, snapshot-only ones once a second.
  let queued = null;
  let inflight = false;
  let last = 0;
  const run = async () => {
    if (inflight) { window.setTimeout(run, 100); return; }
    if (!queued) return;
    const u = queued; queued = null; inflight = true; last = performance.now();
    const keep = focusKey();
    try {
      renderWorld();
      await view.refresh(u);
      restoreFocus(keep);
    } catch (e) { console.warn("refresh failed", e); }
    inflight = false;
  };
  connectLive((data) => {
    if (queued) { queued.state_changed = queued.state_changed || data.state_changed; return; }
    queued = { ...data };
    const wait = data.state_changed ? 0 : Math.max(0, 1000 - (performance.now() - last));
    window.setTimeout(run, wait);
  });
}

// A re-render replaces the page's elements: put the keyboard focus back where it was (same id, or the same
// action button of the same request), so that a live update never throws a keyboard user out.
function focusKey() {
  const el = document.activeElement;
  if (!el || el === document.body || !document.getElementById("page").contains(el)) return null;
  if (el.id) return { id: el.id };
  const holder = el.closest("[data-request], [data-incident], [data-model]");
  const action = el.getAttribute("data-action");
  if (holder && action) {
    const attr = ["request", "incident", "model"].find((k) => holder.dataset[k]);
    return { attr, value: holder.dataset[attr], action };
  }
  return null;
}

function restoreFocus(key) {
  if (!key || (document.activeElement && document.activeElement !== document.body)) return;
  let el = null;
  if (key.id) el = document.getElementById(key.id);
  else {
    for (const holder of document.querySelectorAll(`[data-${key.attr}]`)) {
      if (holder.dataset[key.attr] === key.value) { el = holder.querySelector(`[data-action="${key.action}"]`); break; }
    }
  }
  if (el) el.focus();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();
