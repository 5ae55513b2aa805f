// ddbsc serve: draws /api/status (the JSON of `ddbsc status --json`) every refresh.
// Read-only: the page only ever sends GET requests. Every value goes into the page as text
// (textContent), never as markup.
"use strict";

// Answers slower than this count as failed (the next refresh tries again).
const FETCH_LIMIT_MS = 30000;

let settings = { app: "", refresh_ms: 2000, lag: false, alive_within_ms: 15000 };
let lastGood = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// 1234 -> "1.2 s"; 125000 -> "2 min 5 s"; always coarse: it is read at a glance.
function duration(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 10) return `${(ms / 1000).toFixed(1)} s`;
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

// A horizontal bar: `value` of `scale`, with a label; `hot` when past `hotFrom`.
function bar(value, scale, label, hotFrom) {
  const fill = el("div", { class: "fill" });
  const share = scale > 0 ? Math.min(1, value / scale) : 0;
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  const hot = hotFrom !== undefined && value >= hotFrom;
  return el("div", { class: hot ? "bar hot" : "bar" }, fill, el("span", { class: "label" }, label));
}

// The largest of `values` or `floor`: bars are scaled to the worst row, but small values
// do not fill a bar on their own.
function scaleOf(values, floor) {
  return Math.max(floor, ...values.filter((v) => typeof v === "number"));
}

function shortCheckpoint(checkpoint) {
  // Sequence numbers are 21-40 digits: the end is what changes.
  if (/^\d{16,}$/.test(checkpoint)) return "…" + checkpoint.slice(-10);
  if (checkpoint.length > 28) return checkpoint.slice(0, 27) + "…";
  return checkpoint;
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}` }, text);
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children);
  return node;
}

function renderSummary(status) {
  const alive = status.workers.filter((w) => w.alive).length;
  const dead = status.workers.length - alive;
  const unowned = status.leases.filter((l) => !l.owner && l.state !== "finished").length;
  const deadOwned = status.leases.filter((l) => l.owner && l.owner_alive === false).length;
  const handoffs = status.leases.filter((l) => l.handoff_to).length;
  const item = (count, text, kind) =>
    el("li", { class: kind || "", "data-summary": text }, el("b", {}, count), " ", text);
  const items = [
    item(alive, alive === 1 ? "worker alive" : "workers alive"),
    item(dead, dead === 1 ? "worker dead" : "workers dead", dead > 0 ? "bad" : ""),
    item(status.leases.length, status.leases.length === 1 ? "lease" : "leases"),
    item(unowned, "unowned", unowned > 0 ? "warn" : ""),
    item(deadOwned, "held by dead workers", deadOwned > 0 ? "bad" : ""),
    item(handoffs, handoffs === 1 ? "handoff pending" : "handoffs pending", handoffs > 0 ? "warn" : ""),
  ];
  if (settings.lag) {
    const behind = status.leases
      .map((l) => (l.lag && typeof l.lag.records === "number" ? l.lag.records : 0))
      .reduce((a, b) => a + b, 0);
    items.push(item(behind, "records behind", behind > 0 ? "warn" : ""));
  }
  replace("summary", ...items);
}

function renderWorkers(status) {
  const workers = [...status.workers].sort((a, b) => a.id.localeCompare(b.id));
  const scale = scaleOf(workers.map((w) => w.leases), 1);
  const rows = workers.map((w) =>
    el(
      "tr",
      { class: w.alive ? "alive" : "dead", "data-worker": w.id, "data-alive": w.alive },
      el("td", { class: "id mono", title: w.id }, w.id),
      el("td", { class: "state" }, badge(w.alive ? "alive" : "dead", w.alive ? "alive" : "dead")),
      el("td", { class: "leases" }, bar(w.leases, scale, String(w.leases))),
      el("td", { class: "heartbeat", title: `heartbeat #${w.heartbeat}` }, `${duration(w.heartbeat_age_ms)} ago`),
    ),
  );
  replace("workers-body", ...rows);
  document.getElementById("workers-empty").hidden = rows.length > 0;
}

function ownerCell(lease) {
  if (!lease.owner) return el("td", { class: "owner unowned" }, "unowned");
  if (lease.owner_alive === false)
    return el("td", { class: "owner id mono owner-dead", title: `${lease.owner} (dead)` }, `${lease.owner} (dead)`);
  return el("td", { class: "owner id mono", title: lease.owner }, lease.owner);
}

function lagCell(lease, scale) {
  const lag = lease.lag;
  if (!lag) return el("td", { class: "lag muted" }, "-");
  if (lag.error) return el("td", { class: "lag", title: lag.error }, badge("cannot read", "dead"));
  const records = `${lag.records}${lag.complete ? "" : "+"} behind`;
  const age = lag.oldest_unprocessed_age_ms;
  const label = age === null || age === undefined ? records : `${records}, oldest ${duration(age)}`;
  return el("td", { class: "lag" }, bar(age || 0, scale, label, 60000));
}

function renderShards(status) {
  const byTable = new Map();
  for (const lease of status.leases) {
    const name = lease.table || lease.stream;
    if (!byTable.has(name)) byTable.set(name, []);
    byTable.get(name).push(lease);
  }
  const ageScale = scaleOf(status.leases.map((l) => l.last_write_age_ms), 60000);
  const lagScale = scaleOf(
    status.leases.map((l) => (l.lag ? l.lag.oldest_unprocessed_age_ms : null)),
    10000,
  );
  const blocks = [...byTable.keys()].sort().map((name) => {
    const leases = byTable.get(name);
    const head = ["shard", "state", "owner", "checkpoint", "checkpoint age"];
    if (settings.lag) head.push("lag");
    const rows = leases.map((l) => {
      const cells = [
        el("td", { class: "shard id mono", title: l.shard }, l.shard),
        el("td", { class: "state" }, badge(l.state, l.state === "waiting-for-parent" ? "waiting" : l.state)),
        ownerCell(l),
        el("td", { class: "checkpoint mono", title: l.checkpoint }, shortCheckpoint(l.checkpoint)),
        el(
          "td",
          {
            class: "age",
            title: "time since the lease was last written: its checkpoint, or a later owner change or handoff request",
          },
          bar(l.last_write_age_ms || 0, ageScale, duration(l.last_write_age_ms)),
        ),
      ];
      if (settings.lag) cells.push(lagCell(l, lagScale));
      return el(
        "tr",
        { "data-shard": l.shard, "data-owner": l.owner || "", "data-owner-alive": l.owner_alive },
        ...cells,
      );
    });
    const owned = leases.filter((l) => l.owner).length;
    return el(
      "div",
      { class: "table-block", "data-table": name },
      el("h3", {}, name, " ", el("span", { class: "muted" }, `${plural(leases.length, "lease")}, ${owned} owned`)),
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows),
      ),
    );
  });
  replace("tables", ...blocks);
  document.getElementById("shards-empty").hidden = blocks.length > 0;
}

function renderSnapshots(status) {
  const blocks = status.snapshots.map((s) => {
    const name = s.table || s.stream;
    const text = s.done
      ? `done: ${s.segments} segments`
      : `${s.segments_done} of ${s.segments} segments done, ${s.items_in_open_segments} items delivered by the open segments`;
    const owners = s.owners && s.owners.length ? `open segments held by ${s.owners.join(", ")}` : "";
    return el(
      "div",
      { class: "snapshot", "data-snapshot": name },
      el("p", {}, el("b", {}, name), " ", el("span", { class: "muted" }, s.started_at ? `started ${s.started_at}` : "")),
      el("p", {}, el("progress", { max: s.segments || 1, value: s.segments_done }), " ", text),
      owners ? el("p", { class: "muted" }, owners) : null,
    );
  });
  replace("snapshots-list", ...blocks);
  document.getElementById("snapshots").hidden = blocks.length === 0;
}

function renderHandoffs(status) {
  const rows = status.leases
    .filter((l) => l.handoff_to)
    .map((l) =>
      el(
        "tr",
        { "data-handoff": l.shard },
        el("td", {}, l.table || l.stream),
        el("td", { class: "id mono", title: l.shard }, l.shard),
        el("td", { class: "id mono" }, l.owner || "unowned"),
        el("td", { class: "id mono" }, l.handoff_to),
        el("td", {}, `${duration(l.last_write_age_ms)} ago`),
      ),
    );
  replace("handoffs-body", ...rows);
  document.querySelector("#handoffs table").hidden = rows.length === 0;
  document.getElementById("handoffs-empty").hidden = rows.length > 0;
}

function render(status) {
  renderSummary(status);
  renderWorkers(status);
  renderShards(status);
  renderSnapshots(status);
  renderHandoffs(status);
}

function showError(message) {
  const box = document.getElementById("error");
  const since = lastGood ? ` Showing the reading of ${lastGood.toLocaleTimeString()}.` : "";
  box.textContent = `${message}.${since}`;
  box.hidden = false;
  document.getElementById("main").classList.toggle("stale", lastGood !== null);
}

async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_LIMIT_MS);
  try {
    const response = await fetch(path, { cache: "no-store", signal: abort.signal });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // A body that is not JSON is reported below with the status code.
    }
    return { ok: response.ok, code: response.status, body };
  } finally {
    clearTimeout(timer);
  }
}

async function refresh() {
  try {
    const { ok, code, body } = await getJson("/api/status");
    if (ok && body) {
      render(body);
      lastGood = new Date();
      document.getElementById("error").hidden = true;
      document.getElementById("main").classList.remove("stale");
      document.getElementById("updated").textContent = `read at ${lastGood.toLocaleTimeString()}`;
    } else {
      showError(body && body.error ? `Cannot read the lease table: ${body.error}` : `/api/status answered ${code}`);
    }
  } catch (error) {
    showError(`ddbsc serve does not answer (${error.message || error})`);
  } finally {
    setTimeout(refresh, settings.refresh_ms);
  }
}

async function start() {
  try {
    const { ok, body } = await getJson("/api/settings");
    if (ok && body) settings = body;
  } catch (_) {
    // The defaults above do; the status refresh reports a server that does not answer.
  }
  document.getElementById("app").textContent = settings.app;
  document.title = `ddbsc · ${settings.app}`;
  const liveness = settings.observe_ms
    ? `a worker is alive when its heartbeat counter moved during the last ${duration(settings.observe_ms)} of a reading`
    : `a worker is alive when its last stored heartbeat is within ${duration(settings.alive_within_ms)}`;
  document.getElementById("settings").textContent =
    `Refreshes every ${duration(settings.refresh_ms)}; ${liveness}` +
    (settings.lag ? "; lag read from each active shard." : "; start with --lag to read lag.");
  refresh();
}

start();
