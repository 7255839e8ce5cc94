// The quartgate dashboard: polls /dashboard/data once a second and draws it. Rates and
// percentiles are differences of two polls (running totals and cumulative histogram
// buckets, as Prometheus's rate() and histogram_quantile() do). Actions go to the admin
// API with the token typed in, as a bearer header; it is kept for this tab only.
"use strict";

const POLL_MS = 1000;
let previous = null;   // the last data document
const shown = {};      // route -> the last percentiles computed (kept while a route is idle)
let reloadsSeen = null;

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function fixed(value, digits = 1) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits);
}

// The q-quantile (seconds) of the observations between two cumulative histograms.
function quantile(q, now, before) {
  if (!now || !now.counts.length) return null;
  const counts = now.counts.map((c, i) => c - (before && before.counts[i] ? before.counts[i] : 0));
  const total = counts[counts.length - 1];
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      const upper = now.le[i];
      const lower = i === 0 ? 0 : now.le[i - 1];
      if (upper === null) return lower;  // in +Inf: the highest finite bound, as Prometheus
      const below = i === 0 ? 0 : counts[i - 1];
      const inside = counts[i] - below;
      return lower + (upper - lower) * (inside > 0 ? (rank - below) / inside : 1);
    }
  }
  return null;
}

function statusText(status) {
  return Object.entries(status).map(([k, v]) => `${k} ${v}`).join(" · ") || "–";
}

function drawRoutes(data, before, seconds) {
  const rows = [];
  for (const route of data.routes) {
    const old = before ? before.routes.find((r) => r.name === route.name) : null;
    const fresh = old ? route.requests - old.requests : 0;
    const rate = old && seconds > 0 ? fresh / seconds : null;
    if (!old || fresh > 0) {  // new observations: new percentiles (since start on the first poll)
      const ms = (part, q) => {
        const seconds = quantile(q, route[part], old ? old[part] : null);
        return seconds === null ? null : seconds * 1000;
      };
      shown[route.name] = {
        p50: ms("duration", 0.5), p99: ms("duration", 0.99),
        g50: ms("gateway", 0.5), g99: ms("gateway", 0.99),
        u50: ms("upstream", 0.5), u99: ms("upstream", 0.99),
      };
    }
    const p = shown[route.name] || {};
    const cell = (cls, text) => el("td", { class: `num ${cls}`, textContent: text });
    rows.push(el("tr", { "data-route": route.name },
      el("td", { textContent: route.name }),
      cell("rps", fixed(rate)),
      cell("requests", String(route.requests)),
      cell("p50", fixed(p.p50, 2)), cell("p99", fixed(p.p99, 2)),
      cell("gateway-p50", fixed(p.g50, 2)), cell("gateway-p99", fixed(p.g99, 2)),
      cell("upstream-p50", fixed(p.u50, 2)), cell("upstream-p99", fixed(p.u99, 2)),
      el("td", { class: "status", textContent: statusText(route.status) }),
      el("td", { class: "errors", textContent: statusText(route.errors) })));
  }
  $("#routes tbody").replaceChildren(...rows);
}

function drawUpstreams(data) {
  const blocks = [];
  for (const upstream of data.upstreams) {
    const block = el("div", { class: "upstream", "data-upstream": upstream.name },
      el("h3", { textContent: `${upstream.name} (${upstream.kind})` }));
    if (upstream.kind === "app") {
      block.append(el("p", { class: "muted", textContent: "in-process app" }));
      blocks.push(block);
      continue;
    }
    const c = upstream.concurrency;
    block.append(el("p", { class: "muted concurrency", textContent: c
      ? `adaptive concurrency: limit ${c.limit}, in flight ${c.in_flight}, queued ${c.queued}, refused ${c.refused}`
      : "adaptive concurrency off" }));
    block.append(el("p", { class: "muted responses", textContent: `responses: ${statusText(upstream.responses)}` }));
    const table = el("table", { class: "targets" }, el("thead", {}, el("tr", {},
      ...["target", "health", "breaker", "drained", "in use", "idle", "waiting", ""].map((h) => el("th", { textContent: h })))));
    const body = el("tbody");
    for (const t of upstream.targets) {
      const action = t.drained ? "undrain" : "drain";
      const button = el("button", { type: "button", class: action, textContent: t.drained ? "Undrain" : "Drain" });
      button.addEventListener("click", () => act(
        // A target is named by host:port in the admin API (its URL holds slashes).
        `/admin/upstreams/${encodeURIComponent(upstream.name)}/targets/${encodeURIComponent(t.url.split("://")[1])}/${action}`,
        `${action} ${t.url}`));
      body.append(el("tr", { "data-target": t.url },
        el("td", { textContent: t.url }),
        el("td", { class: `health ${t.healthy ? "ok" : "bad"}`, textContent: t.healthy ? "healthy" : "failing" }),
        el("td", { class: "breaker", textContent: t.breaker || "–" }),
        el("td", { class: "drained", textContent: t.drained ? "yes" : "no" }),
        el("td", { class: "num in-use", textContent: String(t.in_use) }),
        el("td", { class: "num idle", textContent: String(t.idle) }),
        el("td", { class: "num waiting", textContent: String(t.waiting) }),
        el("td", {}, button)));
    }
    table.append(body);
    block.append(table);
    blocks.push(block);
  }
  $("#upstreams").replaceChildren(...blocks);
}

function drawConfig(data) {
  const config = data.config;
  $("#config-version").textContent = config.version || "–";
  $("#config-source").textContent = config.source || "–";
  $("#config-loaded").textContent = config.loaded_at ? new Date(config.loaded_at * 1000).toLocaleString() : "–";
  $("#reload-counts").textContent = statusText(config.reloads);
  const total = Object.values(config.reloads).reduce((a, b) => a + b, 0);
  if (reloadsSeen !== null && total > reloadsSeen) {  // one seen while the page is open
    const ok = (config.reloads.success || 0) > ((previous && previous.config.reloads.success) || 0);
    $("#reloads").prepend(el("li", { textContent:
      `${new Date().toLocaleTimeString()}: ${ok ? "reloaded, version " + config.version : "a reload failed, the config in force is unchanged"}` }));
  }
  reloadsSeen = total;
}

function draw(data) {
  const seconds = previous ? data.time - previous.time : 0;
  $("#version").textContent = `v${data.version}`;
  const ready = $("#ready");
  ready.textContent = data.ready ? "ready" : "not ready";
  ready.className = `badge ${data.ready ? "ok" : "bad"}`;
  $("#loop-lag").textContent = data.loop_lag === null ? "–" : `${(data.loop_lag * 1000).toFixed(1)} ms`;
  drawRoutes(data, previous, seconds);
  drawUpstreams(data);
  drawConfig(data);
  $("#updated").textContent = new Date(data.time * 1000).toLocaleTimeString();
  previous = data;
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

function say(text, error = false) {
  const message = $("#message");
  message.textContent = text;
  message.className = error ? "error" : "muted";
}

async function poll() {
  try {
    const response = await fetch("/dashboard/data", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) say(`data: ${response.status} ${body.error}: ${body.detail}`, true);
    else draw(body);
  } catch (error) {
    say(`the gateway does not answer: ${error}`, true);
  }
  setTimeout(poll, POLL_MS);
}

async function act(path, what) {
  const token = $("#token").value;
  sessionStorage.setItem("quartgate-token", token);
  try {
    const response = await fetch(path, { method: "POST", headers: token ? { authorization: `Bearer ${token}` } : {} });
    const body = await response.json();
    if (response.ok) say(`${what}: done`);
    else say(`${what}: ${response.status} ${body.error}: ${body.detail}`, true);
  } catch (error) {
    say(`${what}: ${error}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token").value = sessionStorage.getItem("quartgate-token") || "";
  $("#reload").addEventListener("click", () => act("/admin/reload", "reload"));
  $("#auth").addEventListener("submit", (event) => event.preventDefault());
  poll();
});
