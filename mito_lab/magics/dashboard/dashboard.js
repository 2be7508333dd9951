// The page of `%mito dashboard` (an anywidget module, no build step): every task of the group in
// one column-oriented store, a table that renders only the rows in view, the charts drawn on
// canvas. The kernel sends the whole table now and then (the `table` state) and the rows that
// changed in between (`rows` messages); actions go back to it as messages.

const ROW_HEIGHT = 26;
const RENDER_MS = 500; // the page redraws for new data at most twice a second
const OVERSCAN = 8;
const TABS = ["tasks", "timeline", "durations", "workers"];
const COLUMNS = [
  { key: "id", title: "#", width: "64px" },
  { key: "state", title: "state", width: "150px" },
  { key: "uuid", title: "uuid", width: "100px" },
  { key: "command", title: "command", width: "minmax(160px, 3fr)" },
  { key: "labels", title: "labels", width: "minmax(70px, 1fr)" },
  { key: "duration", title: "duration", width: "84px" },
  { key: "cpu", title: "cpu", width: "64px" },
  { key: "rss", title: "peak mem", width: "76px" },
  { key: "worker", title: "worker", width: "78px" },
  { key: "created", title: "created", width: "76px" },
  { key: "actions", title: "", width: "200px" },
];
const GRID = COLUMNS.map((c) => c.width).join(" ");
const OUTCOMES = ["done", "failed", "running", "waiting"];
const COPY_ICON = `<svg width="11" height="11" viewBox="0 0 11 11"><rect x="3" y="0.5" width="7" height="7.5" rx="1" fill="none" stroke="currentColor"/>
  <rect x="0.5" y="3" width="7" height="7.5" rx="1" fill="var(--md-bg)" stroke="currentColor"/></svg>`;

// the `table` state: JSON in a binary frame (a DataView, or an ArrayBuffer)
function decodeTable(value) {
  if (!value || !value.byteLength) return null;
  const bytes = value instanceof ArrayBuffer ? new Uint8Array(value) : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return JSON.parse(new TextDecoder().decode(bytes));
}

// one store per board, shared by `initialize` and every view of the board; and what the person
// chose to see (search, sort, filter, scroll), so that a view made anew (the kernel refreshes the
// display's snapshot once a burst of changes is over) opens where the last one was
const stores = new Map();
const choices = new Map();

class Store {
  constructor() {
    this.rev = -1;
    this.cols = {};
    this.size = 0;
    this.index = new Map();
    this.version = 0;
    this.listeners = new Set();
  }

  load(value) {
    const table = decodeTable(value);
    if (!table || table.rev < this.rev) return;
    this.cols = {};
    for (const key in table.columns) this.cols[key] = table.columns[key].slice();
    this.size = (this.cols.uuid || []).length;
    this.index = new Map(this.cols.uuid.map((uuid, at) => [uuid, at]));
    this.rev = table.rev;
    this.changed();
  }

  apply(message) {
    if (message.rev <= this.rev) return; // already in the table
    const columns = message.columns;
    const count = columns.uuid.length;
    for (let i = 0; i < count; i++) {
      let at = this.index.get(columns.uuid[i]);
      if (at === undefined) {
        at = this.size++;
        this.index.set(columns.uuid[i], at);
      }
      for (const key in columns) (this.cols[key] ||= [])[at] = columns[key][i];
    }
    this.rev = message.rev;
    this.changed();
  }

  get(at, key) {
    return this.cols[key] ? this.cols[key][at] : undefined;
  }

  changed() {
    this.version++;
    for (const listener of this.listeners) listener();
  }
}

function initialize({ model }) {
  const id = model.get("board_id");
  const store = new Store();
  stores.set(id, store);
  store.load(model.get("table"));
  const load = () => store.load(model.get("table"));
  const apply = (message) => message && message.type === "rows" && store.apply(message);
  model.on("change:table", load);
  model.on("msg:custom", apply);
  return () => {
    model.off("change:table", load);
    model.off("msg:custom", apply);
    stores.delete(id);
  };
}

// --- small helpers ------------------------------------------------------------------------------

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);

// as the kernel's readable_duration (mito_lab/client/views.py): 0.2 s, 3 min 4 s, 2 h 5 min, 3 d 4 h
function durationText(seconds) {
  if (seconds == null) return "";
  if (seconds < 59.95) return `${Math.max(0, seconds).toFixed(1)} s`;
  const whole = Math.max(60, Math.round(seconds));
  const days = Math.floor(whole / 86400), hours = Math.floor((whole % 86400) / 3600);
  const minutes = Math.floor((whole % 3600) / 60), rest = whole % 60;
  if (days) return `${days} d${hours ? ` ${hours} h` : ""}`;
  if (hours) return `${hours} h${minutes ? ` ${minutes} min` : ""}`;
  return `${minutes} min${rest ? ` ${rest} s` : ""}`;
}

// bytes for people, as the kernel's size_text: powers of 1000
function sizeText(bytes) {
  if (bytes == null) return "";
  let value = bytes;
  for (const unit of ["B", "kB", "MB", "GB"]) {
    if (value < 1000) return unit === "B" ? `${bytes} B` : `${+value.toFixed(1)} ${unit}`;
    value /= 1000;
  }
  return `${+value.toFixed(1)} TB`;
}

const pad = (number) => String(number).padStart(2, "0");

// by hand: toLocaleTimeString costs a hundred times more, and every row in view shows one
function clockText(epoch) {
  if (epoch == null) return "";
  const moment = new Date(epoch * 1000);
  const today = new Date();
  if (moment.getDate() === today.getDate() && moment.getMonth() === today.getMonth() && moment.getFullYear() === today.getFullYear()) {
    return `${pad(moment.getHours())}:${pad(moment.getMinutes())}:${pad(moment.getSeconds())}`;
  }
  return `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}`;
}

function outcome(state, exit) {
  if (state === "Cancelled" || (exit != null && exit !== 0)) return "failed";
  if (state === "Finished") return "done";
  return state === "Running" ? "running" : "waiting";
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  for (const factor of [1, 2, 5, 10]) if (raw <= factor * power) return factor * power;
  return 10 * power;
}

function canvasFor(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.floor(width * ratio));
  canvas.height = Math.max(1, Math.floor(height * ratio));
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  context.font = "11px sans-serif";
  return context;
}

// --- the view -----------------------------------------------------------------------------------

function render({ model, el }) {
  let store = stores.get(model.get("board_id"));
  if (!store) {
    store = new Store(); // a view without the model's initialize (should not happen): start from the table
    store.load(model.get("table"));
  }
  const id = model.get("board_id");
  if (!choices.has(id)) choices.set(id, { sortKey: "id", sortDir: -1, search: "", filter: new Set(), scrollTop: 0, follow: true });
  const ui = Object.assign(choices.get(id), { view: [], viewKey: "", offset: 0 });

  el.classList.add("mito-dash");
  el.innerHTML = `
    <div class="md-head"><b>mito</b> group <select class="md-group"></select>
      <span class="md-coordinator"></span><span class="md-live"></span></div>
    <div class="md-progress" title=""><div class="md-bar"></div></div>
    <div class="md-progress-text"></div>
    <div class="md-counts"></div>
    <div class="md-tabs">${TABS.map((tab) => `<button class="md-tab" data-tab="${tab}">${tab}</button>`).join("")}</div>
    <div class="md-pane" data-pane="tasks">
      <div class="md-toolbar"><input class="md-search" type="search" placeholder="search uuid, command, labels, state…">
        <span class="md-shown"></span></div>
      <div class="md-table">
        <div class="md-header" style="grid-template-columns:${GRID}">${COLUMNS.map((c) =>
          `<div class="md-h${c.key === "actions" ? "" : " md-sortable"}" data-key="${c.key}">${c.title}</div>`).join("")}</div>
        <div class="md-scroll"><div class="md-spacer"><div class="md-rows"></div></div></div>
      </div>
      <div class="md-log">
        <div class="md-log-head"><span class="md-log-title">click <b>logs</b> on a task to follow its output here</span>
          <select class="md-stream"><option>stdout</option><option>stderr</option></select></div>
        <pre class="md-log-text"></pre>
      </div>
    </div>
    <div class="md-pane" data-pane="timeline"><div class="md-note md-timeline-note"></div><canvas class="md-timeline"></canvas></div>
    <div class="md-pane" data-pane="durations"><div class="md-note md-durations-note"></div><canvas class="md-histogram"></canvas></div>
    <div class="md-pane" data-pane="workers"><div class="md-note">busy fraction of the workers over time</div>
      <canvas class="md-utilisation"></canvas><div class="md-workers"></div></div>
    <div class="md-status"></div>`;
  const $ = (selector) => el.querySelector(selector);
  const written = new Map(); // what each part was last given: an update that changes nothing touches no DOM
  const write = (selector, html) => {
    if (written.get(selector) === html) return;
    written.set(selector, html);
    $(selector).innerHTML = html;
  };
  const scroll = $(".md-scroll");
  const rowsBox = $(".md-rows");
  const logText = $(".md-log-text");
  const palette = model.get("palette");
  const now = () => Date.now() / 1000 - ui.offset;

  // --- what the table shows: the filtered, sorted rows ---------------------------------------

  function matches(at, needle) {
    if (ui.filter.size) {
      const state = store.get(at, "state");
      const failed = outcome(state, store.get(at, "exit")) === "failed";
      if (!ui.filter.has(state) && !(failed && ui.filter.has("failed"))) return false;
    }
    if (!needle) return true;
    for (const key of ["uuid", "command", "labels", "state", "worker", "msg"]) {
      const value = store.get(at, key);
      if (value != null && String(value).toLowerCase().includes(needle)) return true;
    }
    return String(store.get(at, "id")).includes(needle);
  }

  function sortValue(at, key) {
    if (key === "duration") {
      const started = store.get(at, "started");
      return started == null ? null : (store.get(at, "ended") ?? now()) - started;
    }
    return store.get(at, key);
  }

  function currentView() {
    const key = `${store.version}|${ui.search}|${[...ui.filter].join(",")}|${ui.sortKey}|${ui.sortDir}`;
    if (key === ui.viewKey) return ui.view;
    const needle = ui.search.trim().toLowerCase();
    const view = [];
    for (let at = 0; at < store.size; at++) if (matches(at, needle)) view.push(at);
    const values = new Array(store.size);
    for (const at of view) values[at] = sortValue(at, ui.sortKey);
    view.sort((a, b) => {
      const x = values[a], y = values[b];
      if (x == null || y == null) return x == null ? (y == null ? 0 : 1) : -1; // empty last
      return (x < y ? -1 : x > y ? 1 : 0) * ui.sortDir;
    });
    ui.view = view;
    ui.viewKey = key;
    return view;
  }

  function badge(at) {
    const state = store.get(at, "state");
    const exit = store.get(at, "exit");
    const msg = store.get(at, "msg");
    const exec = store.get(at, "exec");
    let text = state;
    if (exit != null && exit !== 0) text += ` (${exit})`;
    if (msg) text += ` · ${msg}`;
    else if (state === "Running" && exec) text += ` · ${exec}`;
    const color = exit != null && exit !== 0 ? palette.failed : palette.states[state] || palette.unknown;
    return `<span class="md-badge" style="background:${color}" title="${esc(text)}">${esc(text)}</span>`;
  }

  function rowHtml(at) {
    const uuid = store.get(at, "uuid");
    const started = store.get(at, "started");
    const duration = started == null ? null : (store.get(at, "ended") ?? now()) - started;
    const worker = store.get(at, "worker");
    const command = store.get(at, "command");
    const labels = store.get(at, "labels");
    const cpu = store.get(at, "cpu"), efficiency = store.get(at, "efficiency");
    const state = store.get(at, "state");
    const waiting = state === "Pending" || state === "Ready";
    return `<div class="md-row" data-uuid="${esc(uuid)}" style="grid-template-columns:${GRID}">
      <div class="md-c">${store.get(at, "id")}</div>
      <div class="md-c md-state">${badge(at)}</div>
      <div class="md-c"><code title="${esc(uuid)}">${esc(uuid.slice(0, 8))}</code><button class="md-copy" data-act="copy" title="copy the uuid">${COPY_ICON}</button></div>
      <div class="md-c" title="${esc(command)}"><code>${esc(command)}</code></div>
      <div class="md-c" title="${esc(labels)}">${esc(labels)}</div>
      <div class="md-c">${durationText(duration)}</div>
      <div class="md-c" title="${cpu == null ? "" : `${cpu.toFixed(2)} s of CPU${efficiency == null ? "" : `, ${Math.round(efficiency * 100)}% of its cores`}`}">${cpu == null ? "" : `${cpu.toFixed(1)} s`}</div>
      <div class="md-c">${sizeText(store.get(at, "rss"))}</div>
      <div class="md-c">${worker ? `<code title="${esc(worker)}">${esc(worker.slice(0, 8))}</code>` : ""}</div>
      <div class="md-c">${clockText(store.get(at, "created"))}</div>
      <div class="md-c md-actions"><button data-act="logs">logs</button><button data-act="why"${waiting ? "" : " disabled"} title="${waiting ? "why it waits" : "it does not wait"}">why</button><button data-act="cancel"${store.get(at, "cancellable") ? "" : " disabled"}>cancel</button><button data-act="result"${store.get(at, "result") ? "" : " disabled"} title="${store.get(at, "result") ? "download and unpack its result" : "no result artifact"}">result</button></div>
    </div>`;
  }

  function renderTable() {
    const view = currentView();
    const first = Math.max(0, Math.floor(scroll.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((scroll.scrollTop + scroll.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    const height = `${view.length * ROW_HEIGHT}px`, shift = `translateY(${first * ROW_HEIGHT}px)`;
    if ($(".md-spacer").style.height !== height) $(".md-spacer").style.height = height;
    if (rowsBox.style.transform !== shift) rowsBox.style.transform = shift;
    let html = "";
    for (let i = first; i < last; i++) html += rowHtml(view[i]);
    write(".md-rows", html);
    write(".md-shown", view.length === store.size ? `${store.size} tasks` : `${view.length} of ${store.size} tasks shown`);
    for (const header of el.querySelectorAll(".md-sortable")) {
      header.classList.toggle("md-sorted", header.dataset.key === ui.sortKey);
      header.dataset.dir = ui.sortDir > 0 ? "▲" : "▼";
    }
  }

  // --- the summary on top: progress and counts of the whole group ---------------------------

  function renderSummary() {
    const summary = model.get("summary");
    if (!summary || !summary.progress) return;
    ui.offset = Date.now() / 1000 - summary.clock;
    const total = Math.max(1, summary.total);
    const parts = summary.progress;
    write(".md-bar", OUTCOMES.filter((name) => parts[name]).map((name) =>
      `<div class="md-seg md-seg-${name}" style="width:${(100 * parts[name]) / total}%;background:${palette.progress[name]}" title="${parts[name]} ${name}"></div>`).join(""));
    const ended = parts.done + parts.failed;
    write(".md-progress-text", esc(`${ended}/${summary.total} · ` + OUTCOMES.map((name) => `${parts[name]} ${name}`).join(" · ")));
    const chips = palette.order.map((state) =>
      `<button class="md-chip${ui.filter.has(state) ? " md-on" : ""}" data-state="${state}" style="--chip:${palette.states[state]}" title="show only ${state} tasks">${state} <span class="md-count">${summary.counts[state] ?? 0}</span></button>`);
    chips.push(`<button class="md-chip${ui.filter.has("failed") ? " md-on" : ""}" data-state="failed" style="--chip:${palette.failed}" title="show only the tasks that failed">failed <span class="md-count">${parts.failed}</span></button>`);
    write(".md-counts", chips.join(""));
  }

  function renderHead() {
    const select = $(".md-group");
    const groups = model.get("groups");
    select.innerHTML = groups.map((group) => `<option${group === model.get("group") ? " selected" : ""}>${esc(group)}</option>`).join("");
    $(".md-coordinator").textContent = model.get("coordinator");
    const live = model.get("live");
    $(".md-live").textContent = live ? "● live" : "○ not live";
    $(".md-live").classList.toggle("md-is-live", live);
    $(".md-status").textContent = model.get("status");
  }

  // --- the log of the followed task ---------------------------------------------------------

  function renderLog() {
    const log = model.get("task_log");
    if (!log || !log.uuid) return;
    if (log.uuid !== ui.logUuid || log.stream !== ui.logStream) ui.follow = true; // a new log starts at its end
    ui.logUuid = log.uuid;
    ui.logStream = log.stream;
    const why = log.stream === "why";
    $(".md-log-title").innerHTML = why ? `why <code>${esc(log.uuid)}</code> waits` : `<b>${esc(log.stream)}</b> of <code>${esc(log.uuid)}</code>`;
    $(".md-stream").style.visibility = why ? "hidden" : "";
    if (!why) $(".md-stream").value = log.stream;
    logText.textContent = log.text;
    if (ui.follow) logText.scrollTop = logText.scrollHeight;
  }

  // --- charts: the timeline, the durations, the workers' utilisation -------------------------

  function renderTimeline() {
    const canvas = $(".md-timeline");
    const bars = currentView().filter((at) => store.get(at, "started") != null && store.get(at, "worker"));
    const workers = [...new Set(bars.map((at) => store.get(at, "worker")))].sort();
    // a worker running several tasks at once gets a line per task it ran alongside others
    const laneOf = new Map();
    const firstLane = new Map();
    let lanes = 0;
    const byWorker = new Map(workers.map((worker) => [worker, []]));
    for (const at of bars) byWorker.get(store.get(at, "worker")).push(at);
    const note = $(".md-timeline-note");
    const width = Math.max(320, $(".md-pane[data-pane=timeline]").clientWidth - 8);
    if (!bars.length) {
      note.textContent = "no task of the current filter has started yet";
      canvasFor(canvas, width, 1);
      ui.timeline = null;
      return;
    }
    const end = now();
    let start = Infinity, stop = -Infinity;
    for (const at of bars) {
      start = Math.min(start, store.get(at, "started"));
      stop = Math.max(stop, store.get(at, "ended") ?? end);
    }
    for (const worker of workers) {
      const ends = [];
      firstLane.set(worker, lanes);
      for (const at of byWorker.get(worker).sort((a, b) => store.get(a, "started") - store.get(b, "started"))) {
        let line = ends.findIndex((busyUntil) => busyUntil <= store.get(at, "started"));
        if (line < 0) line = ends.push(0) - 1;
        ends[line] = store.get(at, "ended") ?? end;
        laneOf.set(at, lanes + line);
      }
      lanes += Math.max(1, ends.length);
    }
    const lane = lanes > 24 ? 8 : 14, left = 76, top = 4, axis = 22;
    const height = top + lanes * lane + axis;
    const context = canvasFor(canvas, width, height);
    const span = Math.max(stop - start, 0.001);
    const x = (moment) => left + ((moment - start) / span) * (width - left - 8);
    context.fillStyle = "#607d8b";
    context.strokeStyle = "#cfd8dc";
    for (const worker of workers) {
      const y = top + firstLane.get(worker) * lane;
      context.fillText(worker.slice(0, 8), 2, y + 10);
      context.beginPath();
      context.moveTo(0, y);
      context.lineTo(width, y);
      context.stroke();
    }
    for (const at of bars) {
      const state = store.get(at, "state");
      const kind = outcome(state, store.get(at, "exit"));
      context.fillStyle = kind === "failed" ? (state === "Cancelled" ? palette.states.Cancelled : palette.failed) : palette.progress[kind];
      const from = x(store.get(at, "started"));
      const to = x(store.get(at, "ended") ?? end);
      context.fillRect(from, top + laneOf.get(at) * lane + 1, Math.max(1, to - from - 0.5), lane - 2);
    }
    const step = niceStep(span, 8);
    context.fillStyle = "#607d8b";
    context.strokeStyle = "#cfd8dc";
    for (let tick = 0; tick <= span + 1e-9; tick += step) {
      const at = x(start + tick);
      context.beginPath();
      context.moveTo(at, top);
      context.lineTo(at, height - axis + 3);
      context.stroke();
      context.fillText(`+${durationText(tick).replace(".0 s", " s")}`, at + 2, height - 6);
    }
    note.textContent = `${bars.length} tasks on ${workers.length} workers, from ${clockText(start)} · hover a bar for the task`;
    ui.timeline = { bars, laneOf, lane, top, x, end };
  }

  function timelineTip(event) {
    const canvas = $(".md-timeline");
    const shape = ui.timeline;
    if (!shape) return;
    const box = canvas.getBoundingClientRect();
    const px = event.clientX - box.left, py = event.clientY - box.top;
    const hit = shape.bars.find((at) => {
      const index = shape.laneOf.get(at);
      const from = shape.x(store.get(at, "started")), to = shape.x(store.get(at, "ended") ?? shape.end);
      return py >= shape.top + index * shape.lane && py < shape.top + (index + 1) * shape.lane && px >= from - 1 && px <= Math.max(to, from + 1) + 1;
    });
    canvas.title = hit === undefined ? "" :
      `#${store.get(hit, "id")} ${store.get(hit, "state")} · ${durationText((store.get(hit, "ended") ?? shape.end) - store.get(hit, "started"))}\n${store.get(hit, "command")}`;
  }

  function renderDurations() {
    const canvas = $(".md-histogram");
    const note = $(".md-durations-note");
    const width = Math.max(320, $(".md-pane[data-pane=durations]").clientWidth - 8);
    const kinds = ["Finished", "failed", "Cancelled", "Running"];
    const colors = { Finished: palette.states.Finished, failed: palette.failed, Cancelled: palette.states.Cancelled, Running: palette.states.Running };
    const samples = [];
    const end = now();
    for (const at of currentView()) {
      const started = store.get(at, "started");
      if (started == null) continue;
      const state = store.get(at, "state");
      const kind = state === "Cancelled" ? "Cancelled" : outcome(state, store.get(at, "exit")) === "failed" ? "failed" : state;
      if (colors[kind]) samples.push([kind, (store.get(at, "ended") ?? end) - started]);
    }
    if (!samples.length) {
      note.textContent = "no task of the current filter has run yet";
      canvasFor(canvas, width, 1);
      return;
    }
    const sorted = samples.map((sample) => sample[1]).sort((a, b) => a - b);
    const top = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] || sorted[sorted.length - 1] || 1;
    const binCount = 30;
    const binWidth = Math.max(top, 0.001) / binCount;
    const bins = Array.from({ length: binCount }, () => Object.fromEntries(kinds.map((kind) => [kind, 0])));
    for (const [kind, seconds] of samples) bins[Math.min(binCount - 1, Math.floor(seconds / binWidth))][kind]++;
    const highest = Math.max(...bins.map((bin) => kinds.reduce((sum, kind) => sum + bin[kind], 0)));
    const height = 220, left = 44, bottom = 22, legend = 16;
    const context = canvasFor(canvas, width, height);
    const plotWidth = width - left - 8, plotHeight = height - bottom - legend - 4;
    const barWidth = plotWidth / binCount;
    bins.forEach((bin, index) => {
      let y = legend + plotHeight;
      for (const kind of kinds) {
        if (!bin[kind]) continue;
        const h = (bin[kind] / highest) * plotHeight;
        context.fillStyle = colors[kind];
        context.fillRect(left + index * barWidth + 1, y - h, Math.max(1, barWidth - 2), h);
        y -= h;
      }
    });
    context.fillStyle = "#607d8b";
    context.fillText(String(highest), 4, legend + 10);
    context.fillText("0", 4, legend + plotHeight);
    const step = niceStep(top, 6);
    for (let tick = 0; tick <= top + 1e-9; tick += step) context.fillText(durationText(tick), left + (tick / top) * plotWidth, height - 6);
    let legendX = left;
    for (const kind of kinds) {
      const count = samples.filter((sample) => sample[0] === kind).length;
      if (!count) continue;
      context.fillStyle = colors[kind];
      context.fillRect(legendX, 3, 10, 10);
      context.fillStyle = "#37474f";
      const label = `${kind} ${count}`;
      context.fillText(label, legendX + 14, 12);
      legendX += context.measureText(label).width + 28;
    }
    note.textContent = `run time of ${samples.length} tasks of the current filter, per state` + (top < sorted[sorted.length - 1] ? ` (the slowest 1% in the last bar)` : "");
  }

  function utilisation(workers) {
    const end = now();
    let start = end;
    for (let at = 0; at < store.size; at++) {
      const started = store.get(at, "started");
      if (started != null && store.get(at, "worker")) start = Math.min(start, started);
    }
    start = Math.max(start, end - 3600);
    const buckets = 60;
    const width = Math.max((end - start) / buckets, 1e-3);
    // busy: some task running, however many at once (the union of the worker's task intervals)
    const intervals = new Map(workers.map((worker) => [worker.id, []]));
    for (let at = 0; at < store.size; at++) {
      const own = intervals.get(store.get(at, "worker"));
      const started = store.get(at, "started");
      if (own && started != null) own.push([Math.max(started, start), Math.min(store.get(at, "ended") ?? end, end)]);
    }
    const busy = new Map();
    for (const [worker, own] of intervals) {
      const series = new Float64Array(buckets);
      own.sort((a, b) => a[0] - b[0]);
      let from = null, to = null;
      const add = () => {
        for (let b = Math.max(0, Math.floor((from - start) / width)); b < buckets && start + b * width < to; b++) {
          const overlap = Math.min(to, start + (b + 1) * width) - Math.max(from, start + b * width);
          if (overlap > 0) series[b] += overlap / width;
        }
      };
      for (const [a, b] of own) {
        if (b <= a) continue;
        if (to !== null && a <= to) to = Math.max(to, b);
        else {
          if (to !== null) add();
          from = a;
          to = b;
        }
      }
      if (to !== null) add();
      busy.set(worker, series);
    }
    return { busy, buckets, start, end };
  }

  function spark(series) {
    const bars = [...series].map((value, index) =>
      `<rect x="${index * 1.5}" y="${16 - Math.min(1, value) * 16}" width="1.5" height="${Math.min(1, value) * 16}"></rect>`).join("");
    return `<svg class="md-spark" width="${series.length * 1.5}" height="16" viewBox="0 0 ${series.length * 1.5} 16">${bars}</svg>`;
  }

  function renderWorkers() {
    const workers = model.get("workers");
    const box = $(".md-workers");
    const canvas = $(".md-utilisation");
    const width = Math.max(320, $(".md-pane[data-pane=workers]").clientWidth - 8);
    if (!workers.length) {
      box.innerHTML = `<i>no workers serve group ${esc(model.get("group"))}</i>`;
      canvasFor(canvas, width, 1);
      return;
    }
    const { busy, buckets, start, end } = utilisation(workers);
    const overall = Array.from({ length: buckets }, (_, b) => [...busy.values()].reduce((sum, series) => sum + Math.min(1, series[b]), 0) / workers.length);
    const height = 70, left = 36;
    const context = canvasFor(canvas, width, height);
    const x = (b) => left + (b / (buckets - 1)) * (width - left - 8);
    context.fillStyle = `${palette.states.Running}55`;
    context.strokeStyle = palette.states.Running;
    context.beginPath();
    context.moveTo(x(0), height - 14);
    overall.forEach((value, b) => context.lineTo(x(b), height - 14 - value * (height - 24)));
    context.lineTo(x(buckets - 1), height - 14);
    context.closePath();
    context.fill();
    context.stroke();
    context.fillStyle = "#607d8b";
    context.fillText("100%", 2, 12);
    context.fillText("0%", 2, height - 14);
    context.fillText(clockText(start), left, height - 2);
    context.fillText("now", width - 30, height - 2);
    const rows = workers.map((worker) => {
      const series = busy.get(worker.id);
      const fraction = series.reduce((sum, value) => sum + Math.min(1, value), 0) / buckets;
      const task = worker.task && store.index.has(worker.task) ? store.index.get(worker.task) : null;
      const current = worker.task
        ? `<span class="md-current" title="${esc(task == null ? worker.task : store.get(task, "command"))}"><code>${esc(worker.task.slice(0, 8))}</code>${task == null ? "" : ` #${store.get(task, "id")} ${esc(store.get(task, "command"))}`}</span>`
        : "<i>idle</i>";
      return `<tr><td><code title="${esc(worker.id)}">${esc(worker.id.slice(0, 8))}</code></td><td>${esc(worker.state)}</td>
        <td title="${esc(worker.tags.join(", "))}">${esc(worker.tags.join(", "))}</td><td>${esc(worker.labels.join(", "))}</td>
        <td class="md-age">${durationText(Math.max(0, now() - worker.heartbeat)).replace(/\.\d s$/, " s")} ago</td>
        <td class="md-current-cell">${current}</td><td>${spark(series)} ${Math.round(fraction * 100)}%</td></tr>`;
    }).join("");
    box.innerHTML = `<table class="md-worker-table"><colgroup><col style="width:9%"><col style="width:8%"><col style="width:11%">
      <col style="width:11%"><col style="width:9%"><col style="width:30%"><col style="width:22%"></colgroup><tr><th>worker</th><th>state</th><th>tags</th><th>labels</th><th>heartbeat</th>
      <th>current task</th><th>busy (${durationText(end - start).replace(/\.\d s$/, " s")})</th></tr>${rows}</table>`;
  }

  // --- putting it together ------------------------------------------------------------------

  function renderTab() {
    const tab = model.get("tab");
    for (const button of el.querySelectorAll(".md-tab")) button.classList.toggle("md-on", button.dataset.tab === tab);
    for (const pane of el.querySelectorAll(".md-pane")) pane.style.display = pane.dataset.pane === tab ? "" : "none";
    if (tab === "tasks") renderTable();
    else if (tab === "timeline") renderTimeline();
    else if (tab === "durations") renderDurations();
    else renderWorkers();
  }

  // what the user does is drawn at the next frame; what the data does at most every RENDER_MS
  let frame = 0, timer = 0, drawn = 0;
  const draw = () => {
    frame = 0;
    if (!el.isConnected) return; // out of the page (replaced, or scrolled away): nothing to draw
    drawn = performance.now();
    if (ui.summaryChanged) renderSummary();
    ui.summaryChanged = false;
    renderTab();
  };
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };
  const scheduleData = () => {
    if (frame || timer) return;
    const wait = RENDER_MS - (performance.now() - drawn);
    if (wait <= 0) schedule();
    else timer = setTimeout(() => {
      timer = 0;
      schedule();
    }, wait);
  };

  el.addEventListener("click", (event) => {
    const target = event.target.closest("button, .md-sortable");
    if (!target) return;
    if (target.dataset.tab) {
      model.set("tab", target.dataset.tab);
      model.save_changes();
    } else if (target.dataset.state) {
      const state = target.dataset.state;
      if (ui.filter.has(state)) ui.filter.delete(state);
      else ui.filter.add(state);
      renderSummary();
      schedule();
    } else if (target.classList.contains("md-sortable")) {
      ui.sortDir = ui.sortKey === target.dataset.key ? -ui.sortDir : target.dataset.key === "id" ? -1 : 1;
      ui.sortKey = target.dataset.key;
      schedule();
    } else if (target.dataset.act) {
      const uuid = target.closest(".md-row").dataset.uuid;
      if (target.dataset.act === "copy") {
        copyText(uuid).then((done) => ($(".md-status").textContent = done ? `copied ${uuid}` : `copy this uuid: ${uuid}`));
      } else {
        model.send({ action: target.dataset.act, uuid, stream: $(".md-stream").value });
        if (target.dataset.act === "logs") $(".md-log-title").innerHTML = `loading the output of <code>${esc(uuid)}</code>…`;
        if (target.dataset.act === "why") $(".md-log-title").innerHTML = `asking why <code>${esc(uuid)}</code> waits…`;
      }
    }
  });
  $(".md-search").addEventListener("input", (event) => {
    ui.search = event.target.value;
    scroll.scrollTop = 0;
    schedule();
  });
  $(".md-group").addEventListener("change", (event) => {
    model.set("group", event.target.value);
    model.save_changes();
  });
  $(".md-stream").addEventListener("change", (event) => {
    if (ui.logUuid) model.send({ action: "logs", uuid: ui.logUuid, stream: event.target.value });
  });
  scroll.addEventListener("scroll", () => {
    ui.scrollTop = scroll.scrollTop;
    schedule();
  }, { passive: true });
  logText.addEventListener("scroll", () => {
    ui.follow = logText.scrollHeight - logText.scrollTop - logText.clientHeight < 24;
  }, { passive: true });
  $(".md-timeline").addEventListener("mousemove", timelineTip);

  const onSummary = () => {
    ui.summaryChanged = true;
    scheduleData();
  };
  const onHead = () => renderHead();
  model.on("change:summary", onSummary);
  model.on("change:workers", scheduleData);
  model.on("change:tab", schedule);
  model.on("change:task_log", renderLog);
  for (const name of ["group", "groups", "coordinator", "live", "status"]) model.on(`change:${name}`, onHead);
  store.listeners.add(scheduleData);
  const ticker = setInterval(scheduleData, 1000); // run times and heartbeat ages grow

  renderHead();
  renderSummary();
  renderLog();
  $(".md-search").value = ui.search;
  renderTab();
  requestAnimationFrame(() => {
    scroll.scrollTop = ui.scrollTop;
    logText.scrollTop = ui.follow ? logText.scrollHeight : logText.scrollTop;
  });
  return () => {
    clearInterval(ticker);
    if (frame) cancelAnimationFrame(frame);
    clearTimeout(timer);
    store.listeners.delete(scheduleData);
    model.off("change:summary", onSummary);
    model.off("change:workers", scheduleData);
    model.off("change:tab", schedule);
    model.off("change:task_log", renderLog);
    for (const name of ["group", "groups", "coordinator", "live", "status"]) model.off(`change:${name}`, onHead);
  };
}

export default { initialize, render };
