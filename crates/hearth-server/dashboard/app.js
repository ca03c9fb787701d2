// The Hearth dashboard: every number on the page comes from the server's
// keyed REST API, called with the API key the operator logs in with. The
// key lives in this tab's sessionStorage only.
"use strict";

(function () {
  const KEY_ITEM = "hearth.apiKey";
  const REFRESH_MS = 2000;
  const SLOW_REFRESH_MS = 5000;
  const EXTEND_SECS = 300;
  const MAX_TIMEOUT_SECS = 24 * 3600;
  const HISTORY_POINTS = 150;
  const ARM_MS = 4000;

  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY_ITEM);
  let timers = [];
  let cpuHistory = [];
  let memHistory = [];
  let metricsById = {};
  let term = null;
  let socket = null;
  let terminalId = null;
  let selectedBuild = null;
  let lastSandboxes = [];
  const armedKills = new Map();

  class Unauthorized extends Error {}

  // A keyed API call: the parsed JSON answer (null when empty).
  async function api(path, options = {}) {
    const headers = Object.assign({ "X-API-Key": key }, options.headers || {});
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized("the API key was refused");
    const text = await response.text();
    const value = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const message = value && value.message ? value.message : response.statusText;
      const error = new Error(`${response.status}: ${message}`);
      error.status = response.status;
      throw error;
    }
    return value;
  }

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function status(message, isError) {
    $("status").textContent = message || "";
    $("status").className = isError ? "error" : "muted";
  }

  function failed(error) {
    if (error instanceof Unauthorized) {
      logout("The API key was refused; log in again.");
      return;
    }
    status(String(error.message || error), true);
  }

  // ---- login ---------------------------------------------------------

  function showLogin(message) {
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("login-key").value = "";
    $("login-key").focus();
  }

  async function login(event) {
    event.preventDefault();
    key = $("login-key").value.trim();
    try {
      await api("/dashboard/api/node");
    } catch (error) {
      key = null;
      $("login-error").textContent =
        error instanceof Unauthorized ? "That key is not valid here." : String(error.message);
      return;
    }
    sessionStorage.setItem(KEY_ITEM, key);
    start();
  }

  function logout(message) {
    closeTerminal();
    for (const t of timers) clearInterval(t);
    timers = [];
    key = null;
    sessionStorage.removeItem(KEY_ITEM);
    showLogin(message);
  }

  function start() {
    $("login").hidden = true;
    $("app").hidden = false;
    refresh();
    refreshSlow();
    timers.push(setInterval(refresh, REFRESH_MS));
    timers.push(setInterval(refreshSlow, SLOW_REFRESH_MS));
  }

  // ---- formatting ----------------------------------------------------

  function duration(secs) {
    if (!Number.isFinite(secs)) return "–";
    const s = Math.max(0, Math.round(secs));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function mib(bytes) {
    return `${Math.round(bytes / 1048576)} MiB`;
  }

  function meter(fraction, label) {
    const span = el("span");
    span.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
    return [el("span", { class: "meter" }, [span]), label];
  }

  // ---- the live parts ------------------------------------------------

  async function refresh() {
    try {
      const [sandboxes, node] = await Promise.all([
        api("/v2/sandboxes?state=running,paused&limit=100"),
        api("/dashboard/api/node"),
      ]);
      await fetchMetrics(sandboxes);
      renderSandboxes(sandboxes);
      renderNode(node);
      recordHistory(sandboxes);
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if ($("status").className === "error") status("");
    } catch (error) {
      failed(error);
    }
  }

  async function refreshSlow() {
    try {
      await Promise.all([renderTemplates(), renderConcurrent(), renderEvents()]);
    } catch (error) {
      failed(error);
    }
  }

  async function fetchMetrics(sandboxes) {
    const running = sandboxes.filter((s) => s.state === "running");
    const answers = await Promise.all(
      running.map((s) =>
        api(`/sandboxes/${encodeURIComponent(s.sandboxID)}/metrics`).catch((error) => {
          if (error instanceof Unauthorized) throw error;
          return [];
        }),
      ),
    );
    metricsById = {};
    running.forEach((s, i) => {
      const list = answers[i] || [];
      if (list.length) metricsById[s.sandboxID] = list[list.length - 1];
    });
  }

  function rerender() {
    renderSandboxes(lastSandboxes);
  }

  function renderSandboxes(sandboxes) {
    lastSandboxes = sandboxes;
    const body = $("sandboxes").tBodies[0];
    const now = Date.now();
    sandboxes.sort((a, b) => Date.parse(b.startedAt) - Date.parse(a.startedAt));
    const rows = sandboxes.map((s) => {
      const id = s.sandboxID;
      const m = metricsById[id];
      const age = (now - Date.parse(s.startedAt)) / 1000;
      const left = (Date.parse(s.endAt) - now) / 1000;
      const cpu = m
        ? meter(m.cpuUsedPct / 100, `${m.cpuUsedPct.toFixed(0)}% of ${m.cpuCount}`)
        : [`– of ${s.cpuCount}`];
      const mem = m
        ? meter(m.memUsed / m.memTotal, `${mib(m.memUsed)} / ${mib(m.memTotal)}`)
        : [`– / ${s.memoryMB} MiB`];
      const actions = [];
      if (s.state === "running") {
        actions.push(el("button", { text: "Terminal", "data-action": "terminal", onclick: () => openTerminal(id) }));
        actions.push(el("button", { text: "Pause", "data-action": "pause", onclick: () => act(id, "pause") }));
        actions.push(
          el("button", { text: `+${EXTEND_SECS / 60} min`, "data-action": "extend", onclick: () => extend(id, left) }),
        );
      } else if (s.state === "paused") {
        actions.push(el("button", { text: "Resume", "data-action": "resume", onclick: () => act(id, "resume") }));
      }
      const armed = (armedKills.get(id) || 0) > now;
      actions.push(
        el("button", {
          text: armed ? "Confirm kill" : "Kill",
          class: armed ? "danger armed" : "danger",
          "data-action": "kill",
          onclick: () => armOrKill(id),
        }),
      );
      return el("tr", { "data-id": id, class: id === terminalId ? "selected" : "" }, [
        el("td", { class: "mono", text: id }),
        el("td", { text: s.alias || s.templateID }),
        el("td", { class: `state-${s.state}`, text: s.state }),
        el("td", { text: duration(age) }),
        el("td", { text: s.state === "paused" ? "–" : duration(left) }),
        el("td", {}, cpu),
        el("td", {}, mem),
        el("td", { class: "actions" }, actions),
      ]);
    });
    body.replaceChildren(...rows);
    $("sandboxes-empty").hidden = rows.length > 0;
    if (terminalId && !sandboxes.some((s) => s.sandboxID === terminalId && s.state === "running")) {
      $("terminal-state").textContent = "(the sandbox is no longer running)";
    }
  }

  // A kill takes two clicks: the first arms the button for a while.
  function armOrKill(id) {
    if ((armedKills.get(id) || 0) > Date.now()) {
      armedKills.delete(id);
      act(id, "kill");
    } else {
      armedKills.set(id, Date.now() + ARM_MS);
      setTimeout(() => rerender(), ARM_MS + 50);
    }
    rerender();
  }

  async function act(id, action) {
    const path = `/sandboxes/${encodeURIComponent(id)}`;
    try {
      status(`${action} ${id}…`);
      if (action === "kill") {
        if (id === terminalId) closeTerminal();
        await api(path, { method: "DELETE" });
      } else {
        await api(`${path}/${action}`, { method: "POST", body: {} });
      }
      status(`${action} ${id}: done`);
    } catch (error) {
      failed(error);
    }
    refresh();
  }

  async function extend(id, leftSecs) {
    const timeout = Math.min(MAX_TIMEOUT_SECS, Math.max(0, Math.round(leftSecs)) + EXTEND_SECS);
    try {
      await api(`/sandboxes/${encodeURIComponent(id)}/timeout`, { method: "POST", body: { timeout } });
      status(`${id} now ends in ${duration(timeout)}`);
    } catch (error) {
      failed(error);
    }
    refresh();
  }

  function renderNode(node) {
    const used = node.slotsUsed;
    const capacity = node.slotsCapacity;
    $("slots").textContent = `${used} / ${capacity}`;
    $("slots-bar").style.width = `${capacity ? Math.round((100 * used) / capacity) : 0}%`;
    $("count-running").textContent = node.sandboxes.running || 0;
    $("count-paused").textContent = node.sandboxes.paused || 0;
    $("count-pooled").textContent = Object.values(node.pooled).reduce((a, b) => a + b, 0);
    const memory = Object.values(node.vmm).reduce((a, v) => a + v.memoryBytes, 0);
    $("vmm-memory").textContent = mib(memory);
  }

  function recordHistory(sandboxes) {
    const metrics = sandboxes.map((s) => metricsById[s.sandboxID]).filter(Boolean);
    const now = Date.now() / 1000;
    const cpu = metrics.length ? metrics.reduce((a, m) => a + m.cpuUsedPct, 0) / metrics.length : 0;
    const mem = metrics.reduce((a, m) => a + m.memUsed, 0) / 1048576;
    cpuHistory.push([now, cpu]);
    memHistory.push([now, mem]);
    if (cpuHistory.length > HISTORY_POINTS) cpuHistory.shift();
    if (memHistory.length > HISTORY_POINTS) memHistory.shift();
    chart("chart-cpu", cpuHistory, 100);
    chart("chart-mem", memHistory, null);
  }

  async function renderConcurrent() {
    const end = Math.floor(Date.now() / 1000);
    const samples = await api(`/teams/local/metrics?start=${end - 3600}&end=${end}`);
    chart(
      "chart-concurrent",
      samples.map((s) => [s.timestampUnix, s.concurrentSandboxes]),
      null,
    );
  }

  // A line chart of [x, y] points in an SVG whose viewBox is 300 × 100.
  function chart(id, points, fixedMax) {
    const svg = $(id);
    const ns = "http://www.w3.org/2000/svg";
    const children = [];
    for (const y of [25, 50, 75]) {
      const line = document.createElementNS(ns, "line");
      line.setAttribute("class", "grid");
      line.setAttribute("x1", "0");
      line.setAttribute("x2", "300");
      line.setAttribute("y1", String(y));
      line.setAttribute("y2", String(y));
      children.push(line);
    }
    const axis = $(`${id}-axis`);
    if (points.length === 0) {
      svg.replaceChildren(...children);
      axis.replaceChildren(el("span", { text: "no samples yet" }));
      return;
    }
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs);
    const x1 = Math.max(...xs);
    const top = fixedMax || Math.max(1, ...ys) * 1.15;
    const sx = (x) => (x1 === x0 ? 300 : ((x - x0) / (x1 - x0)) * 300);
    const sy = (y) => 100 - (Math.min(y, top) / top) * 96;
    const coords = points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
    if (points.length === 1) coords.unshift(`0,${sy(points[0][1]).toFixed(1)}`);
    const area = document.createElementNS(ns, "polygon");
    area.setAttribute("class", "area");
    area.setAttribute("points", `${coords[0].split(",")[0]},100 ${coords.join(" ")} 300,100`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", "line");
    line.setAttribute("points", coords.join(" "));
    children.push(area, line);
    svg.replaceChildren(...children);
    const last = ys[ys.length - 1];
    const fmt = (v) => (Math.abs(v) >= 10 ? v.toFixed(0) : v.toFixed(1));
    axis.replaceChildren(
      el("span", { text: new Date(x0 * 1000).toLocaleTimeString() }),
      el("span", { text: `now ${fmt(last)} · max ${fmt(Math.max(...ys))}` }),
    );
  }

  async function renderTemplates() {
    const [templates, builds] = await Promise.all([api("/templates"), api("/dashboard/api/builds?limit=20")]);
    $("templates").tBodies[0].replaceChildren(
      ...templates.map((t) =>
        el("tr", { "data-template": t.templateID }, [
          el("td", { class: "mono", text: t.templateID }),
          el("td", { text: String(t.cpuCount) }),
          el("td", { text: `${t.memoryMB} MiB` }),
          el("td", { text: `${t.diskSizeMB} MiB` }),
          el("td", { text: String(t.buildCount) }),
          el("td", { text: new Date(t.updatedAt).toLocaleString() }),
        ]),
      ),
    );
    const now = Date.now();
    $("builds").tBodies[0].replaceChildren(
      ...builds.map((b) => {
        const end = b.finishedAt ? Date.parse(b.finishedAt) : b.status === "building" ? now : Date.parse(b.updatedAt);
        return el("tr", { "data-build": b.buildID }, [
          el("td", { class: "mono", text: b.templateID }),
          el("td", { class: "mono", title: b.buildID, text: b.buildID.slice(0, 8) }),
          el("td", { class: `build-${b.status}`, title: b.reason || "", text: b.status }),
          el("td", { text: new Date(b.createdAt).toLocaleTimeString() }),
          el("td", { text: duration((end - Date.parse(b.createdAt)) / 1000) }),
          el("td", {}, [
            el("a", { class: "build", text: "log", onclick: () => showBuildLog(b.templateID, b.buildID) }),
          ]),
        ]);
      }),
    );
    $("builds-empty").hidden = builds.length > 0;
    if (selectedBuild) showBuildLog(...selectedBuild);
  }

  async function showBuildLog(template, build) {
    selectedBuild = [template, build];
    $("build-log-panel").hidden = false;
    $("build-log-title").textContent = `${template} · ${build}`;
    const lines = [];
    let status = "";
    try {
      for (let offset = 0; offset < 2000; ) {
        const page = await api(
          `/templates/${encodeURIComponent(template)}/builds/${encodeURIComponent(build)}/status?logsOffset=${offset}&limit=100`,
        );
        status = page.status;
        lines.push(...page.logs);
        if (page.reason) lines.push(`failed: ${page.reason.message}`);
        if (page.logs.length < 100) break;
        offset += page.logs.length;
      }
    } catch (error) {
      failed(error);
    }
    $("build-log-title").textContent = `${template} · ${build} · ${status}`;
    $("build-log").textContent = lines.length ? lines.join("\n") : "(no log entries)";
  }

  async function renderEvents() {
    const list = $("events");
    let events;
    try {
      events = await api("/events/sandboxes?limit=20");
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      events = [];
    }
    if (!Array.isArray(events) || events.length === 0) {
      list.replaceChildren(el("li", { class: "muted", text: "no events" }));
      return;
    }
    list.replaceChildren(
      ...events.map((e) =>
        el("li", {}, [
          el("span", { class: "muted", text: `${new Date(e.timestamp).toLocaleTimeString()} ` }),
          el("strong", { text: e.type }),
          ` ${e.sandboxId || ""}`,
          e.sandboxTemplateId ? el("span", { class: "muted", text: ` (${e.sandboxTemplateId})` }) : "",
        ]),
      ),
    );
  }

  // ---- the terminal --------------------------------------------------

  // Columns and rows that fit the terminal box.
  function fit() {
    const box = $("terminal");
    const probe = el("span", { text: "MMMMMMMMMM" });
    $("terminal-screen").append(probe);
    const charWidth = probe.getBoundingClientRect().width / 10 || 8;
    const lineHeight =
      parseFloat(getComputedStyle($("terminal-screen")).lineHeight) ||
      probe.getBoundingClientRect().height * 1.25 ||
      16;
    probe.remove();
    const cols = Math.max(20, Math.floor((box.clientWidth - 16) / charWidth));
    const rows = Math.max(5, Math.floor((box.clientHeight - 16) / lineHeight));
    return [cols, rows];
  }

  function openTerminal(id) {
    closeTerminal();
    terminalId = id;
    $("terminal-panel").hidden = false;
    $("terminal-title").textContent = id;
    $("terminal-state").textContent = "connecting…";
    const [cols, rows] = fit();
    term = new window.HearthTerminal($("terminal-screen"), cols, rows);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/dashboard/terminal/${encodeURIComponent(id)}?cols=${cols}&rows=${rows}`;
    // A browser cannot set headers on a WebSocket: the key goes as a
    // subprotocol, which the server checks and never echoes.
    const ws = new WebSocket(url, ["hearth-terminal", `key.${key}`]);
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onopen = () => {
      if (socket !== ws) return;
      $("terminal-state").textContent = "connected";
      $("terminal").focus();
    };
    ws.onmessage = (event) => {
      if (socket !== ws) return;
      if (typeof event.data === "string") {
        const control = JSON.parse(event.data);
        if (control.error) $("terminal-state").textContent = `error: ${control.error}`;
        else if (control.exit !== undefined) $("terminal-state").textContent = `exited (${control.exit})`;
        return;
      }
      term.write(new Uint8Array(event.data));
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      if ($("terminal-state").textContent === "connected") {
        $("terminal-state").textContent = "disconnected";
      } else if ($("terminal-state").textContent === "connecting…") {
        $("terminal-state").textContent = "could not connect";
      }
      socket = null;
    };
  }

  function closeTerminal() {
    if (socket) {
      const ws = socket;
      socket = null;
      ws.close();
    }
    terminalId = null;
    $("terminal-panel").hidden = true;
  }

  function send(bytes) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(new TextEncoder().encode(bytes));
    }
  }

  function setUp() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout(""));
    $("terminal-close").addEventListener("click", closeTerminal);
    const box = $("terminal");
    box.addEventListener("keydown", (e) => {
      const bytes = window.HearthTerminal.keyBytes(e);
      if (bytes === null) return;
      e.preventDefault();
      send(bytes);
    });
    box.addEventListener("paste", (e) => {
      e.preventDefault();
      send(e.clipboardData.getData("text").replace(/\r?\n/g, "\r"));
    });
    window.addEventListener("resize", () => {
      if (!term || !socket) return;
      const [cols, rows] = fit();
      if (cols === term.cols && rows === term.rows) return;
      term.resize(cols, rows);
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ resize: [cols, rows] }));
    });
    if (key) start();
    else showLogin("");
  }

  setUp();
})();
