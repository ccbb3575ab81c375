// Ferry dashboard: polls the agent's local API (agent/API.md) and draws live charts from its
// Server-Sent Events stream. Plain ES2020, no framework, no build step: the agent embeds this file.
//
// Layout of this file: helpers, API access, status tiles, device table, firmware updates, live
// charts, start-up.
"use strict";

const STATUS_EVERY_MS = 2000;
const DEVICES_EVERY_MS = 3000;
const FIRMWARE_EVERY_MS = 1000;
const FIRMWARE_UPDATES_SHOWN = 5; // the most recent updates' jobs are listed
const WINDOW_MS = 10 * 60 * 1000; // a chart shows at most the last 10 minutes
const LIVE_BUCKET_MS = 1000; // live samples are averaged per second
const TOKEN_KEY = "ferry.api-token";

// ---- helpers ----------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

/** A DOM element with attributes and children (strings become text, never HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

/** An SVG element with attributes. */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function setText(selector, text) {
  $(selector).textContent = text;
}

/** A badge: its text, and `data-state` for the colour (see style.css). */
function setBadge(selector, state) {
  const node = $(selector);
  node.textContent = state;
  node.dataset.state = state;
}

/** A reading's value from the API: a number, or "NaN", "Infinity", "-Infinity" (API.md). */
const toNumber = (v) => (typeof v === "string" ? Number(v) : v);
const num = (v) =>
  v == null
    ? "–"
    : !Number.isFinite(v)
      ? String(v)
      : Number.isInteger(v)
        ? String(v)
        : v.toFixed(Math.abs(v) >= 100 ? 1 : 2);
const int = (v) => (v == null ? "–" : v.toLocaleString("en-US"));
const rate = (v) => (v == null ? "–" : v.toFixed(v >= 100 ? 0 : 1));

function bytes(b) {
  if (b == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) [b, i] = [b / 1024, i + 1];
  return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A unit to show: none for "1" (a plain count). */
const unitLabel = (unit) => (unit && unit !== "1" ? unit : "");

const ago = (ms) => (ms == null ? "never" : `${duration(Math.max(0, Date.now() - ms) / 1000)} ago`);

// ---- errors: one banner, one message per source, cleared when that source works again ---------

const errors = new Map();

function report(source, error) {
  if (error) errors.set(source, error.message ?? String(error));
  else errors.delete(source);
  const banner = $("#error-banner");
  banner.textContent = [...new Set(errors.values())].join(" · ");
  banner.hidden = errors.size === 0;
}

/** Runs `fn` now and then `ms` after each run ends; its errors go to the banner. */
function every(ms, source, fn) {
  const tick = async () => {
    try {
      await fn();
      report(source, null);
    } catch (e) {
      report(source, e);
    }
    setTimeout(tick, ms);
  };
  tick();
}

// ---- API access (with the token, when the agent has one) --------------------------------------

const token = () => localStorage.getItem(TOKEN_KEY);

async function api(path) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  let res;
  try {
    res = await fetch(path, { headers });
  } catch (e) {
    throw new Error(`The agent is unreachable (${e.message}).`);
  }
  if (res.status === 401) {
    $("#token-form").hidden = false;
    throw new Error("The agent wants an API token: enter it above.");
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${path}: ${res.status} ${body?.detail ?? res.statusText}`);
  return body;
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
  location.reload(); // every poll and the stream start again with the token
});

// ---- status tiles -----------------------------------------------------------------------------

async function refreshStatus() {
  const s = await api("/api/v1/status");
  setText("#gateway", s.gateway);
  setText("#version", `v${s.version}`);
  setText("#uptime", `up ${duration(s.uptime_s)}`);

  setBadge("#uplink-state", s.uplink.state);
  setText("#uplink-rate", rate(s.uplink.events_per_s));
  setText("#backlog-events", int(s.uplink.backlog_events));
  const age = s.uplink.oldest_unforwarded_age_s;
  setText("#backlog-age", age == null ? "" : `, oldest ${duration(age)} old`);

  setText("#samples-per-s", rate(s.ingest.samples_per_s));
  setText("#samples-committed", int(s.ingest.samples_committed));
  setText("#devices-online", `${s.ingest.devices_online} of ${s.ingest.devices}`);

  const store = s.store;
  setBadge(
    "#store-state",
    store.disk_full ? "disk full" : store.backpressure ? "backpressure" : store.writable ? "ok" : "read-only"
  );
  setText("#db-used", bytes(s.disk.db_used_bytes));
  setText("#disk-headroom", bytes(s.disk.headroom_bytes));
  const perDay = s.disk.written_bytes_per_day;
  setText("#writes-per-day", bytes(perDay == null ? null : Math.round(perDay)));
  $("#writes-per-day").title = `at the rate of the last 5 minutes; ${bytes(s.disk.written_bytes)} since the agent started`;
  const d = s.drops;
  setText("#drops", int(d.by_device + d.refused + d.dropped_oldest));
  $("#drops").title = `by devices ${d.by_device}, refused ${d.refused}, oldest dropped ${d.dropped_oldest}`;
}

// ---- device table -----------------------------------------------------------------------------

let devices = new Map(); // id -> Device, from the last poll

async function refreshDevices() {
  const [list, latest] = await Promise.all([api("/api/v1/devices"), api("/api/v1/latest")]);
  devices = new Map(list.devices.map((d) => [d.id, d]));
  const latestOf = new Map(latest.devices.map((d) => [d.device, d.sensors]));
  $("#devices tbody").replaceChildren(...list.devices.map((d) => deviceRow(d, latestOf.get(d.id) ?? [])));
  $("#no-devices").hidden = devices.size > 0;
  if (!live && devices.size) {
    const wanted = decodeURIComponent(location.hash.slice(1)); // #sim-0001 opens that device
    select(devices.has(wanted) ? wanted : devices.keys().next().value);
  }
}

function deviceRow(d, sensors) {
  const state = d.online ? "online" : "offline";
  const row = el(
    "tr",
    { "data-device": d.id, "data-online": String(d.online), class: live?.device === d.id ? "selected" : "" },
    el("td", {}, el("strong", {}, d.id), el("div", { class: "muted" }, d.firmware ?? "")),
    el("td", {}, el("span", { class: "badge", "data-state": state }, state)),
    el("td", { title: d.last_seen ?? "" }, ago(d.last_seen_ms)),
    el("td", {}, el("div", { class: "readings" }, ...sensors.map(reading))),
    el("td", { class: "num" }, int(d.counters.events)),
    el("td", { class: "num" }, unforwarded(d.forwarding))
  );
  row.addEventListener("click", () => select(d.id));
  return row;
}

/** One latest value: `data-sensor` holds just the number, so tests can read it. */
function reading(s) {
  return el(
    "span",
    { class: "reading", title: s.ts },
    el("span", { class: "sensor" }, s.sensor),
    " ",
    el("span", { class: "value", "data-sensor": s.sensor }, num(toNumber(s.value))),
    " ",
    el("span", { class: "unit" }, unitLabel(s.unit))
  );
}

/** Events not yet forwarded; `f` is null while forwarding is off. */
function unforwarded(f) {
  if (f == null) return "–";
  return f.lag_ms == null ? int(f.unforwarded) : `${int(f.unforwarded)} (${duration(f.lag_ms / 1000)} behind)`;
}

// ---- firmware updates: polled, and live from the selected device's stream ----------------------

const ENDED = new Set(["done", "failed", "cancelled"]);

async function refreshFirmware() {
  const { updates } = await api("/api/v1/firmware/updates");
  const shown = updates.slice(0, FIRMWARE_UPDATES_SHOWN);
  const rows = shown.flatMap((u) => u.jobs.map((j) => jobRow(u, j)));
  $("#firmware-jobs tbody").replaceChildren(...rows);
  $("#firmware").hidden = rows.length === 0;
}

function jobRow(u, j) {
  const row = el(
    "tr",
    { "data-job": String(j.id), "data-device": j.device },
    el("td", {}, `#${u.id}`, el("div", { class: "muted" }, u.state)),
    el("td", {}, j.device),
    el("td", {}, j.version),
    el("td", {}, el("span", { class: "badge", "data-state": j.state }, j.state)),
    el("td", {}, el("progress", { max: String(j.length || 1), value: String(j.offset) }), " ", el("span", { class: "muted" }, ""))
  );
  showJob(row, j);
  return row;
}

/** Puts a job's state into its row (from a poll or a live `firmware` event). */
function showJob(row, j) {
  const badge = row.querySelector(".badge");
  badge.textContent = j.error ? `${j.state}: ${j.error}` : j.state;
  badge.dataset.state = j.state;
  const bar = row.querySelector("progress");
  bar.value = j.offset;
  const pct = j.length ? Math.floor((100 * j.offset) / j.length) : 0;
  row.querySelector("td:last-child .muted").textContent = ENDED.has(j.state) ? "" : `${pct} %`;
}

// ---- live charts of the selected device -------------------------------------------------------

let live = null; // { device, source: EventSource, charts: Map(sensor -> Chart), lastEventId }

function select(id) {
  live?.source.close();
  const view = { device: id, source: null, charts: new Map(), lastEventId: null };
  live = view;
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  setText("#selected-device", id);
  for (const row of document.querySelectorAll("#devices tr[data-device]")) {
    row.classList.toggle("selected", row.dataset.device === id);
  }
  $("#charts").replaceChildren();
  const sensors = devices.get(id)?.sensors ?? [];
  for (const s of sensors) chartOf(view, s.name, s.unit);
  openStream(view);
  for (const s of sensors) loadHistory(view, s.name);
}

function chartOf(view, sensor, unit) {
  let chart = view.charts.get(sensor);
  if (!chart) {
    chart = new Chart(sensor, unit);
    view.charts.set(sensor, chart);
    $("#charts").append(chart.figure);
  }
  return chart;
}

function openStream(view) {
  const query = new URLSearchParams({ device: view.device });
  if (token()) query.set("access_token", token()); // EventSource cannot send headers
  if (view.lastEventId) query.set("last_event_id", view.lastEventId); // replay what we missed
  const source = new EventSource(`/api/v1/stream?${query}`);
  view.source = source;
  source.addEventListener("sample", (message) => {
    const e = JSON.parse(message.data);
    view.lastEventId = message.lastEventId;
    chartOf(view, e.sensor, e.unit).add(e.ts_ms, toNumber(e.value));
  });
  source.addEventListener("firmware", (message) => {
    const j = JSON.parse(message.data);
    const row = document.querySelector(`#firmware-jobs tr[data-job="${j.id}"]`);
    if (row) showJob(row, j);
  });
  source.onopen = () => report("stream", null);
  source.onerror = () => {
    // After a dropped connection the browser reconnects by itself (sending Last-Event-ID, so
    // nothing is missed). A refused stream (401, 503) is closed for good: we retry in 5 s.
    if (source.readyState !== EventSource.CLOSED) {
      report("stream", new Error("The live stream was interrupted; reconnecting…"));
      return;
    }
    report("stream", new Error("The agent refused the live stream; retrying in 5 s."));
    setTimeout(() => live === view && openStream(view), 5000);
  };
}

async function loadHistory(view, sensor) {
  const query = new URLSearchParams({ device: view.device, sensor, since: "-10m", bucket: "10s", agg: "avg" });
  try {
    const s = await api(`/api/v1/series?${query}`);
    const points = s.points.map((p) => ({ t: p.ts_ms, v: toNumber(p.value), n: p.count }));
    chartOf(view, sensor, s.unit).seed(points, s.bucket_ms);
    report("history", null);
  } catch (e) {
    report("history", e);
  }
}

const W = 400; // SVG user units; CSS scales the chart to the page width
const H = 120;
const LEFT = 48; // room for the value labels
const PAD = 8;

/** A line chart of one sensor: points {t, v, n} (time in ms, mean value, samples averaged). */
class Chart {
  constructor(sensor, unit) {
    this.points = [];
    this.line = svg("polyline", { class: "line" });
    this.hi = svg("text", { x: LEFT - 6, y: PAD + 4, class: "axis" });
    this.lo = svg("text", { x: LEFT - 6, y: H - PAD + 4, class: "axis" });
    this.last = el("span", { class: "last" }, "–");
    this.span = el("span", { class: "muted" });
    this.figure = el(
      "figure",
      { class: "chart", "data-sensor": sensor, "data-points": "0" },
      el("figcaption", {}, el("strong", {}, sensor), " ", this.last, " ", el("span", { class: "unit" }, unitLabel(unit)), " ", this.span),
      svg(
        "svg",
        { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${sensor} over time` },
        svg("line", { x1: LEFT, x2: W, y1: PAD, y2: PAD, class: "grid" }),
        svg("line", { x1: LEFT, x2: W, y1: H - PAD, y2: H - PAD, class: "grid" }),
        this.hi,
        this.lo,
        this.line
      )
    );
  }

  /** A live sample, averaged into its one-second point. Samples older than the last point are
   * left out (only a device clock jump makes them), so the points stay in time order. */
  add(tsMs, value) {
    const t = tsMs - (tsMs % LIVE_BUCKET_MS);
    const last = this.points[this.points.length - 1];
    if (last && last.t === t) {
      last.n += 1;
      last.v += (value - last.v) / last.n;
    } else if (!last || t > last.t) {
      this.points.push({ t, v: value, n: 1 });
    }
    this.redraw();
  }

  /** History from the agent (buckets of `bucketMs`), put before the first live point. */
  seed(points, bucketMs) {
    const first = this.points.length ? this.points[0].t : Infinity;
    this.points = points.filter((p) => p.t + bucketMs <= first).concat(this.points);
    this.redraw();
  }

  /** Draws at the next animation frame, at most once per frame however many samples arrive. */
  redraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const end = this.points.length ? this.points[this.points.length - 1].t : 0;
    this.points = this.points.filter((p) => p.t > end - WINDOW_MS);
    const pts = this.points;
    this.figure.dataset.points = String(pts.length);
    if (!pts.length) return;
    const t0 = pts[0].t;
    // NaN and infinities have no place on the axis: the line leaves them out, the label shows them.
    const drawn = pts.filter((p) => Number.isFinite(p.v));
    let lo = drawn.length ? Math.min(...drawn.map((p) => p.v)) : 0;
    let hi = drawn.length ? Math.max(...drawn.map((p) => p.v)) : 0;
    if (hi === lo) [lo, hi] = [lo - 1, hi + 1];
    const x = (t) => (end === t0 ? W : LEFT + ((t - t0) / (end - t0)) * (W - LEFT));
    const y = (v) => PAD + (1 - (v - lo) / (hi - lo)) * (H - 2 * PAD);
    this.line.setAttribute("points", drawn.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "));
    this.hi.textContent = num(hi);
    this.lo.textContent = num(lo);
    this.last.textContent = num(pts[pts.length - 1].v);
    this.span.textContent = `· last ${duration((end - t0) / 1000)}`;
  }
}

// ---- start --------------------------------------------------------------------------------------

every(STATUS_EVERY_MS, "status", refreshStatus);
every(DEVICES_EVERY_MS, "devices", refreshDevices);
every(FIRMWARE_EVERY_MS, "firmware", refreshFirmware);
