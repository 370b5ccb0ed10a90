// fhirwall audit console. Served by fhirwall itself under a CSP that allows
// only this origin's script: no inline handlers, no third-party code. Data is
// only ever put into the page as text (textContent), never as markup.
"use strict";

const API = "/admin/console/api/";
let csrf = null; // the session's CSRF token, in memory only

// ---- small DOM helpers ----------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function table(id, columns, rows) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null, text: c.title })));
  const body = rows.map((r) =>
    el("tr", {}, columns.map((c) => {
      const v = c.value(r);
      return el("td", { class: c.num ? "num" : null }, v instanceof Node ? v : String(v ?? ""));
    })));
  if (rows.length === 0) body.push(el("tr", {}, el("td", { colspan: columns.length, class: "muted", text: "nothing recorded" })));
  return el("table", { id }, el("thead", {}, head), el("tbody", {}, body));
}

function link(href, text) {
  return el("a", { href, text });
}

function withheldText(w) {
  const parts = Object.entries(w || {}).map(([k, n]) => `${k} ${n}`);
  return parts.length ? parts.join(", ") : "—";
}

function show(id, visible) {
  document.getElementById(id).hidden = !visible;
}

// ---- talking to the gateway -------------------------------------------------

class SignedOut extends Error {}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET" && csrf) opts.headers["X-CSRF-Token"] = csrf;
  const resp = await fetch(path.startsWith("/") ? path : API + path, opts);
  if (resp.status === 401) throw new SignedOut();
  const body = resp.status === 204 ? {} : await resp.json();
  if (!resp.ok) {
    const issue = body.issue && body.issue[0];
    throw new Error((issue && (issue.diagnostics || issue.code)) || `HTTP ${resp.status}`);
  }
  if (body.chain) showChainAlarm(body.chain);
  return body;
}

function showChainAlarm(chain) {
  const alarm = document.getElementById("alarm");
  if (chain.intact) {
    alarm.hidden = true;
    alarm.textContent = "";
  } else {
    const b = chain.break || {};
    alarm.textContent = `AUDIT CHAIN BROKEN at seq ${b.seq} (${b.file} line ${b.line}): ${b.reason}. ` +
      "Records from there on cannot be trusted; run fhirwall audit verify and investigate.";
    alarm.hidden = false;
  }
  document.getElementById("status").textContent =
    `${chain.records} records indexed through seq ${chain.indexed_through}; writer at seq ${chain.writer_head.seq}`;
}

// ---- sign-in ----------------------------------------------------------------

function signedOut(message) {
  csrf = null;
  show("nav", false);
  show("view", false);
  show("alarm", false);
  show("sign-in", true);
  const err = document.getElementById("sign-in-error");
  err.textContent = message || "";
  err.hidden = !message;
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const token = input.value;
  input.value = "";
  const resp = await fetch("/admin/console/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!resp.ok) {
    signedOut(resp.status === 401 ? "Wrong admin token." : `Sign-in failed (HTTP ${resp.status}).`);
    return;
  }
  csrf = (await resp.json()).csrf;
  signedIn();
}

async function signOut() {
  try {
    await api("/admin/console/session", { method: "DELETE" });
  } catch (e) {
    // The session is gone either way.
  }
  location.hash = "";
  signedOut("Signed out.");
}

function signedIn() {
  show("sign-in", false);
  show("nav", true);
  show("view", true);
  if (!location.hash || location.hash === "#") location.hash = "#/overview";
  else render();
}

// ---- views --------------------------------------------------------------------

const OUTCOMES = [
  ["succeeded", (b) => b.requests - b.refused - b.failed],
  ["refused", (b) => b.refused],
  ["failed", (b) => b.failed],
];

// A stacked bar chart: one bar per bucket, one colour per series.
function chart(id, buckets, series) {
  const W = 900, H = 170, pad = 28;
  const totals = buckets.map((b) => series.reduce((s, [, f]) => s + f(b), 0));
  const max = Math.max(1, ...totals);
  const bw = buckets.length ? (W - pad) / buckets.length : 0;
  const bars = [];
  buckets.forEach((b, i) => {
    let y = H - pad;
    series.forEach(([name, f], s) => {
      const v = f(b);
      if (v <= 0) return;
      const h = (v / max) * (H - 2 * pad);
      y -= h;
      bars.push(svg("rect", { x: pad + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, class: `s${s}` },
        svg("title", {}, `${b.start}: ${name} ${v}`)));
    });
  });
  const first = buckets[0], last = buckets[buckets.length - 1];
  const labels = [
    svg("text", { x: 0, y: pad - 8 }, String(max)),
    svg("text", { x: 0, y: H - pad }, "0"),
    first ? svg("text", { x: pad, y: H - 8 }, first.start) : null,
    last ? svg("text", { x: W - 170, y: H - 8 }, last.start) : null,
  ];
  return el("div", { class: "chart", id },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": id }, bars, labels),
  );
}

function legend(series) {
  return el("div", { class: "legend" }, series.map(([name], i) => el("span", { class: `s${i}`, text: name })));
}

function reasonSeries(total) {
  return Object.keys(total.withheld || {}).sort().map((k) => [k, (b) => (b.withheld || {})[k] || 0]);
}

function cards(total) {
  const card = (label, n) => el("div", { class: "card" }, el("div", { class: "n", text: n }), el("div", { class: "muted", text: label }));
  return el("div", { class: "cards" },
    card("requests", total.requests), card("refused", total.refused), card("failed", total.failed),
    card("records withheld", total.suppressed), card("redactions", total.redacted),
    card("patients disclosed", total.patients_disclosed));
}

function trafficCharts(series, total) {
  const reasons = reasonSeries(total);
  return [
    el("h3", { text: `Requests per ${bucketName(series.bucket_s)}` }),
    chart("chart-requests", series.buckets, OUTCOMES),
    legend(OUTCOMES),
    el("h3", { text: `Withheld and redacted per ${bucketName(series.bucket_s)}, by reason` }),
    chart("chart-withheld", series.buckets, reasons),
    legend(reasons),
  ];
}

function bucketName(s) {
  const names = { 60: "minute", 300: "5 minutes", 900: "15 minutes", 3600: "hour", 21600: "6 hours", 86400: "day", 604800: "week" };
  return names[s] || `${Math.round(s / 86400)} days`;
}

const TALLY_COLUMNS = [
  { title: "requests", num: true, value: (r) => r.requests },
  { title: "refused", num: true, value: (r) => r.refused },
  { title: "failed", num: true, value: (r) => r.failed },
  { title: "withheld", num: true, value: (r) => r.suppressed },
  { title: "redacted", num: true, value: (r) => r.redacted },
  { title: "by reason", value: (r) => withheldText(r.withheld) },
  { title: "patients disclosed", num: true, value: (r) => r.patients_disclosed },
];

async function overview(params) {
  const q = new URLSearchParams();
  if (params.get("client")) q.set("client", params.get("client"));
  if (params.get("organization")) q.set("organization", params.get("organization"));
  const data = await api("overview" + (q.toString() ? "?" + q : ""));
  const filter = data.filter.client || data.filter.organization;
  return el("div", { id: "overview" },
    el("h2", { text: filter ? `Traffic of ${filter}` : "Traffic" }),
    filter ? link("#/overview", "all clients") : null,
    cards(data.total),
    trafficCharts(data.series, data.total),
    el("h3", { text: "Per client" }),
    table("clients-table", [
      { title: "client", value: (r) => link(`#/client/${encodeURIComponent(r.client)}`, r.client) },
      { title: "organization", value: (r) => r.organization },
      ...TALLY_COLUMNS,
    ], data.clients),
    el("h3", { text: "Per organization" }),
    table("organizations-table", [
      { title: "organization", value: (r) => link(`#/overview?organization=${encodeURIComponent(r.organization)}`, r.organization) },
      ...TALLY_COLUMNS,
    ], data.organizations),
  );
}

function rowsTable(id, rows, withPatient) {
  return table(id, [
    { title: "seq", num: true, value: (r) => r.seq },
    { title: "recorded (UTC)", value: (r) => r.recorded },
    { title: "client", value: (r) => (r.client ? link(`#/client/${encodeURIComponent(r.client)}`, r.client) : "—") },
    { title: "organization", value: (r) => r.organization || "—" },
    { title: "request", value: (r) => r.event },
    { title: "status", num: true, value: (r) => r.status },
    withPatient
      ? { title: "this patient", value: (r) => r.patient }
      : { title: "patients disclosed", num: true, value: (r) => r.patients },
    { title: "withheld / redacted in the answer", value: (r) => withheldText(r.withheld) },
  ], rows);
}

function pager(next, route) {
  return next ? el("p", {}, link(`${route}?before=${next}`, "older records →")) : el("p", { class: "muted", text: "no older records" });
}

function lookupForm(id, label, placeholder, go) {
  const input = el("input", { id: `${id}-input`, placeholder, required: true });
  return el("form", { class: "inline", id: `${id}-form`, onsubmit: (e) => { e.preventDefault(); go(input.value.trim()); } },
    el("label", { for: `${id}-input`, text: label }), input, el("button", { type: "submit", text: "Show" }));
}

async function patientView(id, params) {
  const form = lookupForm("patient", "Patient id", "pat-0001", (v) => { location.hash = `#/patient/${encodeURIComponent(v.replace(/^Patient\//, ""))}`; });
  if (!id) return el("div", { id: "patient-view" }, el("h2", { text: "Patient" }), form);
  const q = params.get("before") ? `?before=${encodeURIComponent(params.get("before"))}` : "";
  const data = await api(`patients/${encodeURIComponent(id)}${q}`);
  return el("div", { id: "patient-view" },
    el("h2", { text: `Patient/${data.patient}` }),
    form,
    el("p", { text: `${data.records} audit records name this patient.` }),
    el("h3", { text: "Clients that received data about this patient" }),
    table("patient-clients", [
      { title: "client", value: (r) => (r.client ? link(`#/client/${encodeURIComponent(r.client)}`, r.client) : "—") },
      { title: "organization", value: (r) => r.organization || "—" },
      { title: "answers with data", num: true, value: (r) => r.disclosures },
      { title: "requests answered without data", num: true, value: (r) => r.requests_without_data },
      { title: "first", value: (r) => r.first_disclosed || "—" },
      { title: "last", value: (r) => r.last_disclosed || "—" },
    ], data.clients),
    el("h3", { text: "Records, newest first" }),
    rowsTable("patient-rows", data.rows, true),
    pager(data.next_before, `#/patient/${encodeURIComponent(data.patient)}`),
  );
}

async function clientView(id, params) {
  if (!id) {
    const data = await api("clients");
    return el("div", { id: "client-view" }, el("h2", { text: "Clients" }),
      table("client-list", [
        { title: "client", value: (r) => link(`#/client/${encodeURIComponent(r.client)}`, r.client) },
        { title: "records", num: true, value: (r) => r.records },
      ], data));
  }
  const q = params.get("before") ? `?before=${encodeURIComponent(params.get("before"))}` : "";
  const data = await api(`clients/${encodeURIComponent(id)}${q}`);
  return el("div", { id: "client-view" },
    el("h2", { text: `Client ${data.client}` }),
    el("p", { class: "muted", text: data.organization ? `organization ${data.organization}` : "" }),
    cards(data.total),
    trafficCharts(data.series, data.total),
    el("h3", { text: "Records, newest first" }),
    rowsTable("client-rows", data.rows, false),
    pager(data.next_before, `#/client/${encodeURIComponent(data.client)}`),
  );
}

async function optOutsView() {
  const data = await api("opt-outs");
  return el("div", { id: "opt-outs-view" },
    el("h2", { text: "Members who opted out" }),
    el("p", { class: "muted", text: "No provider receives data about these members." }),
    table("opt-outs-table", [
      { title: "patient", value: (r) => link(`#/patient/${encodeURIComponent(r.patient)}`, r.patient) },
      { title: "since (UTC)", value: (r) => r.since },
    ], data.opt_outs));
}

async function chainView() {
  const data = await api("chain");
  return chainPanel(data.chain);
}

function chainPanel(c) {
  const state = c.intact
    ? el("p", { id: "chain-state", class: "ok", text: "INTACT: every record read so far links to the one before it and matches its hash." })
    : el("p", { id: "chain-state", class: "bad", text: `BROKEN at seq ${c.break.seq} (${c.break.file} line ${c.break.line}): ${c.break.reason}` });
  const rebuild = el("button", { type: "button", id: "rebuild", text: "Read and verify the whole log again" });
  rebuild.addEventListener("click", async () => {
    rebuild.disabled = true;
    rebuild.textContent = "Reading the log…";
    const data = await api("rebuild", { method: "POST" });
    document.getElementById("view").replaceChildren(chainPanel(data.chain));
  });
  return el("div", { id: "chain-view" },
    el("h2", { text: "Audit chain" }),
    state,
    table("chain-table", [{ title: "", value: (r) => r[0] }, { title: "", value: (r) => r[1] }], [
      ["records indexed", c.records],
      ["indexed through seq", c.indexed_through],
      ["hash of that record", c.indexed_head],
      ["last durable record (writer)", `seq ${c.writer_head.seq} ${c.writer_head.hash}`],
      ["unreadable lines", c.unreadable],
      ["index size", `${Math.round(c.index_bytes / 1024)} KiB`],
    ]),
    el("p", { class: "muted", text: "The console reads the log from seq 1 when it starts and then follows it, checking every line as `fhirwall audit verify` does. " +
      "A record edited after it was read is found by reading the whole log again, or by `fhirwall audit verify` with anchors kept elsewhere." }),
    rebuild,
  );
}

const ROUTES = {
  overview: (id, params) => overview(params),
  patient: patientView,
  client: clientView,
  "opt-outs": optOutsView,
  chain: chainView,
};

async function render() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  const route = ROUTES[name] ? name : "overview";
  const id = rest.length ? decodeURIComponent(rest.join("/")) : "";
  for (const n of Object.keys(ROUTES)) document.getElementById(`nav-${n}`).classList.toggle("active", n === route);
  const view = document.getElementById("view");
  view.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  try {
    view.replaceChildren(await ROUTES[route](id, new URLSearchParams(query || "")));
  } catch (e) {
    if (e instanceof SignedOut) return signedOut("Your session ended; sign in again.");
    view.replaceChildren(el("p", { class: "error", id: "view-error", text: `Could not load this view: ${e.message}` }));
  }
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => { if (csrf) render(); });
  try {
    csrf = (await api("session")).csrf;
    signedIn();
  } catch (e) {
    signedOut("");
  }
}

document.addEventListener("DOMContentLoaded", start);
