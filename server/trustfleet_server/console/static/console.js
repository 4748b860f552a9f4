// The fleet console's pages: each fetches its JSON from /api, draws it into the page's shell,
// and draws again when /api/events says the store changed. Text from the store (device ids,
// reasons, report bodies) only ever goes into the page as text nodes, never as markup.
"use strict";

(() => {
  const body = document.body;
  const page = body.dataset.page;
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "trustfleet.operator-token";

  // ------------------------------------------------------------------ building blocks

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  const dash = (v) => (v === null || v === undefined || v === "" ? "-" : String(v));
  const version = (v) => (v === null || v === undefined ? "none" : `v${v}`);

  function iso(t) {
    if (t === null || t === undefined) return "-";
    return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function ago(now, t) {
    if (t === null || t === undefined) return "never";
    let d = Math.max(0, Math.round(now - t));
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (d >= size) return `${Math.floor(d / size)}${unit} ago`;
    }
    return `${d}s ago`;
  }

  function when(t, now) {
    if (t === null || t === undefined) return "-";
    const label = now === undefined ? iso(t) : ago(now, t);
    return el("time", { datetime: new Date(t * 1000).toISOString(), title: iso(t) }, label);
  }

  function row(cells, attrs) {
    return el("tr", attrs, ...cells.map((c) => (c instanceof Node && c.tagName === "TH" ? c : el("td", {}, c))));
  }

  function fill(id, rows, empty, columns) {
    const tbody = $(id);
    if (!rows.length && empty) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty)));
    } else {
      tbody.replaceChildren(...rows);
    }
  }

  function facts(id, pairs) {
    $(id).replaceChildren(...pairs.filter((p) => p).map(([k, v, attrs]) =>
      el("div", {}, el("dt", {}, k), el("dd", attrs || {}, v))));
  }

  function deviceLink(id) {
    return el("a", { href: `/devices/${encodeURIComponent(id)}` }, id);
  }

  // A JSON value as short readable text: long lists show their first items and their length.
  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function compact(value) {
    if (value === null || value === undefined) return "-";
    if (Array.isArray(value)) {
      const shown = value.slice(0, value.length > 6 ? 3 : 6).map(compact).join(", ");
      return value.length > 6 ? `[${shown}, … ${value.length} in all]` : `[${shown}]`;
    }
    if (typeof value === "object") {
      return `{${Object.entries(value).map(([k, v]) => `${k}: ${compact(v)}`).join(", ")}}`;
    }
    return String(value);
  }

  function detailText(detail) {
    if (!detail || typeof detail !== "object") return compact(detail);
    return Object.entries(detail).map(([k, v]) => `${k}: ${compact(v)}`).join("; ");
  }

  function reportSummary(report) {
    if (!report || typeof report !== "object") return compact(report);
    const parts = [];
    for (const k of ["reason", "hostname", "noted-hostname", "detail"]) {
      if (report[k] !== undefined && report[k] !== null) parts.push(`${k}: ${compact(report[k])}`);
    }
    return parts.length ? parts.join("; ") : compact(report);
  }

  function live(message, error) {
    const node = $("live");
    if (!node) return;
    node.hidden = !message;
    node.textContent = message || "";
    node.classList.toggle("error", !!error);
  }

  async function getJSON(url, options) {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin",
                                        headers: { Accept: "application/json" }, ...(options || {}) });
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  // ------------------------------------------------------------------ overview

  const STATE_LABELS = { "fail-open": "fail-open", "no-store": "no store" };

  function drawChart(states, counts) {
    const chart = $("state-chart");
    const rowHeight = 24, label = 78, width = 360, room = width - label - 44;
    const top = Math.max(1, ...states.map((s) => counts[s] || 0));
    const parts = [];
    states.forEach((s, i) => {
      const n = counts[s] || 0;
      const y = i * rowHeight + 4;
      const w = n ? Math.max(2, Math.round((room * n) / top)) : 0;
      parts.push(svg("text", { x: 0, y: y + 15, class: "chart-label" }, STATE_LABELS[s] || s));
      parts.push(svg("rect", { x: label, y: y + 2, width: w, height: rowHeight - 8,
                               class: `bar bar-${s}` }));
      parts.push(svg("text", { x: label + w + 6, y: y + 15, class: "chart-count" }, String(n)));
    });
    chart.setAttribute("viewBox", `0 0 ${width} ${states.length * rowHeight + 8}`);
    chart.setAttribute("aria-label", "Devices by state");
    chart.replaceChildren(svg("title", {}, "Devices by state: " +
      states.map((s) => `${s} ${counts[s] || 0}`).join(", ")), ...parts);
  }

  function drawOverview(d) {
    $("total-devices").textContent = String(d.devices);
    drawChart(d.states, d.by_state);
    fill("version-table", d.table.map((t) => row([
      el("th", { scope: "row" }, version(t.version)),
      ...d.states.map((s) => String(t.states[s] || 0)), String(t.total)])),
      "No device has reported yet.", d.states.length + 2);
    const c = d.counts;
    const link = (n, state) => (n && state ? el("a", { href: `/devices?state=${state}` }, String(n)) : String(n));
    const silentFor = d.silent_after >= 3600 ? `${Math.round(d.silent_after / 3600)} h` : `${d.silent_after} s`;
    facts("look", [
      [`Silent (nothing for ${silentFor})`, String(c.silent)],
      ["Suspect (claims a version never published)", String(c.suspect)],
      ["Quarantined", String(c.quarantined)],
      ["Stale", link(c.stale, "stale")],
      ["Fail-open", link(c.fail_open, "fail-open")],
      ["Offline", link(c.offline, "offline")],
    ]);
    const r = d.rollout;
    const short = $("rollout-short");
    if (!r) {
      short.replaceChildren(el("p", {}, "No rollout yet."));
    } else {
      const wave = r.wave ? `, wave ${r.current_wave + 1} of ${r.waves} (${r.wave})` : "";
      const parts = [el("p", {},
        el("a", { href: `/rollouts/${r.id}` }, `Rollout ${r.id}`),
        `: bundle ${version(r.version)}, `, el("strong", { class: `state state-${r.state}` }, r.state),
        `${wave}; ${r.waves_done} of ${r.waves} waves passed.`)];
      if (r.halt_reason) parts.push(el("p", { class: "reason" }, r.halt_reason));
      short.replaceChildren(...parts);
    }
    const rep = d.reports;
    const dup = rep.duplicates ? `, ${plural(rep.duplicates, "duplicate")} not counted` : "";
    $("reports-short").replaceChildren(
      rep.reports ? `${rep.reports} distinct reports from ${rep.devices} devices${dup}; newest ${iso(rep.newest)}. `
        : "No reports stored. ",
      el("a", { href: "/reports" }, "All reports"));
    const w = d.live;
    $("worker").hidden = !w;
    if (w) {
      facts("worker-facts", [
        ["Worker", w.worker], ["Leading", w.leading ? "yes" : "no"],
        ["Broker", `${w.broker} (${w.connected ? "connected" : "not connected"})`],
        ["Statuses ingested", String(w.statuses)], ["Statuses rejected", String(w.rejected)],
        ["Reports", String(w.reports)],
        ["Last timestamp", w.last_timestamp ? iso(w.last_timestamp) : "none published"],
      ]);
    }
  }

  // ------------------------------------------------------------------ rollouts

  function drawRollouts(d) {
    fill("rollout-rows", d.rollouts.map((r) => row([
      el("a", { href: `/rollouts/${r.id}` }, `Rollout ${r.id}`), version(r.version),
      el("span", { class: `state state-${r.state}` }, r.state), `${r.waves_done} of ${r.waves}`,
      dash(r.wave), when(r.started), when(r.finished), dash(r.halt_reason)])),
    "No rollout yet.", 8);
  }

  function waveSection(p, n, now) {
    const recorded = p.source !== "not recorded";
    const counts = [
      ["Succeeded", String(p.succeeded), { "data-testid": `wave-${n}-succeeded` }],
      ["Failed", String(p.failed), { "data-testid": `wave-${n}-failed` }],
      ["Pending", String(p.pending)], ["Offline", String(p.offline)], ["Silent", String(p.silent)],
      ["Devices", String(p.members)],
    ];
    if (p.excluded) counts.push(["Excluded (suspect or quarantined)", String(p.excluded)]);
    const status = [p.status];
    if (p.status === "running" && p.deadline_at) {
      status.push(`deadline ${iso(p.deadline_at)} (in ${Math.max(0, p.deadline_at - now)} s)`);
    }
    if (p.ended) status.push(`ended ${iso(p.ended)}`);
    if (!recorded && p.status !== "not reached") status.push("counts not recorded");
    const id = `wave-${n}-heading`;
    const dl = el("dl", { class: "counts" }, ...counts.map(([k, v, attrs]) =>
      el("div", {}, el("dt", {}, k), el("dd", attrs || {}, v))));
    const failing = p.status === "running" || p.status === "paused"
      ? p.failing.map((f) => el("li", {}, deviceLink(f.device), `: ${f.reason}`)) : [];
    return el("section", { class: `wave wave-${p.status.replace(/ /g, "-")}`, "aria-labelledby": id },
      el("h3", { id }, `Wave ${n}: ${p.name}`),
      el("progress", { max: Math.max(1, p.members), value: p.succeeded, "aria-label": `Wave ${n} progress` },
        `${p.succeeded} of ${p.members}`),
      el("p", { class: "wave-status" }, status.join(", ")),
      recorded ? dl : null,
      p.reason ? el("p", { class: "reason" }, p.reason) : null,
      failing.length ? el("ul", { class: "failing", "aria-label": `Wave ${n} failing devices` }, ...failing) : null);
  }

  function drawRollout(d) {
    body.dataset.state = d.state;
    $("rollout-state").textContent = d.state;
    $("rollout-state").className = `state state-${d.state}`;
    $("current-wave").textContent = d.wave || "not started";
    $("rollout-version").textContent = `${version(d.version)} (sha256 ${d.sha256.slice(0, 16)}…)`;
    $("rollout-started").replaceChildren(when(d.started));
    $("rollout-finished").replaceChildren(when(d.finished));
    $("halt-rule").textContent = d.halt_rule;
    const stopped = d.state === "halted" || d.state === "aborted";
    $("halt").hidden = !stopped;
    $("h-halt").textContent = d.state === "aborted" ? "Why it was aborted" : "Why it halted";
    $("halt-reason").textContent = stopped ? dash(d.halt_reason) : "";
    fill("failing-rows", d.failing_devices.map((f) => row([deviceLink(f.device), f.reason])),
      "No device failed.", 2);
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.disabled = !d.actions[button.dataset.action];
    }
    $("waves").replaceChildren(...d.progress.map((p, i) => waveSection(p, i + 1, d.time)));
    fill("event-rows", d.events.slice().reverse().map((e) => row([when(e.time), e.text])), "No events.", 2);
  }

  function setupActions(id) {
    const token = $("token");
    try {
      token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) { /* storage refused: the field still works */ }
    token.addEventListener("input", () => {
      try {
        sessionStorage.setItem(TOKEN_KEY, token.value);
      } catch (e) { /* as above */ }
    });
    $("actions").addEventListener("submit", (e) => e.preventDefault());
    const result = $("action-result");
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.action;
        const buttons = document.querySelectorAll("button[data-action]");
        buttons.forEach((b) => { b.disabled = true; });
        result.className = "";
        result.textContent = `Sending ${action}…`;
        try {
          const d = await getJSON(`/api/rollouts/${id}/${action}`, {
            method: "POST",
            headers: { Accept: "application/json", "Content-Type": "application/json",
                       Authorization: `Bearer ${token.value.trim()}` },
            body: JSON.stringify({ reason: $("reason").value }),
          });
          result.className = "ok";
          result.textContent = `Rollout ${id} ${d.state} (${action} by ${d.done.operator}).`;
          drawRollout(d);
          body.dataset.updated = String(d.time);
        } catch (e) {
          result.className = "error";
          result.textContent = `Refused: ${e.message}`;
          refresh();
        }
      });
    }
  }

  // ------------------------------------------------------------------ devices

  const FILTERS = ["q", "state", "version", "group"];
  let offset = 0;
  let deviceLimit = 100;

  function devicesURL() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const v = $(name).value.trim();
      if (v) params.set(name, v);
    }
    params.set("limit", String(deviceLimit));
    params.set("offset", String(offset));
    return `/api/devices?${params}`;
  }

  function keepInURL() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const v = $(name).value.trim();
      if (v) params.set(name, v);
    }
    const query = params.toString();
    history.replaceState(null, "", query ? `/devices?${query}` : "/devices");
  }

  function ensureOption(select, value, label) {
    if (![...select.options].some((o) => o.value === value)) select.append(el("option", { value }, label));
  }

  function drawDevices(d) {
    $("device-count").textContent = `${d.matching} devices`;
    const select = $("version");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "all"),
      ...d.versions.map((v) => el("option", { value: v === null ? "none" : String(v) }, version(v))));
    ensureOption(select, "none", "none");
    if (chosen) ensureOption(select, chosen, chosen);
    select.value = chosen;
    $("groups").replaceChildren(...d.groups.map((g) => el("option", { value: g })));
    fill("device-rows", d.devices.map((x) => {
      const flags = x.states.filter((s) => s !== x.state && s !== x.console_state);
      return row([
        deviceLink(x.device), version(x.version),
        el("span", {}, el("span", { class: `state state-${x.console_state}` }, x.console_state),
          flags.length ? ` (${flags.join(", ")})` : ""),
        dash(x.group), dash(x.bucket), when(x.last_seen, d.time), dash(x.last_problem)],
      { "data-device": x.device });
    }), d.total ? "No device matches." : "No device has reported yet.", 7);
    const last = Math.min(d.offset + d.devices.length, d.matching);
    $("page-info").textContent = d.matching ? `${d.offset + 1}–${last} of ${d.matching}` : "";
    $("prev").disabled = d.offset === 0;
    $("next").disabled = d.offset + d.limit >= d.matching;
  }

  function setupDevices() {
    const params = new URLSearchParams(location.search);
    for (const name of FILTERS) {
      const v = params.get(name);
      if (v === null) continue;
      if (name === "version") ensureOption($("version"), v, v);
      $(name).value = v;
    }
    let timer = null;
    const changed = (delay) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        offset = 0;
        keepInURL();
        refresh();
      }, delay);
    };
    $("q").addEventListener("input", () => changed(200));
    $("group").addEventListener("input", () => changed(200));
    $("state").addEventListener("change", () => changed(0));
    $("version").addEventListener("change", () => changed(0));
    $("filters").addEventListener("submit", (e) => {
      e.preventDefault();
      changed(0);
    });
    $("prev").addEventListener("click", () => {
      offset = Math.max(0, offset - deviceLimit);
      refresh();
    });
    $("next").addEventListener("click", () => {
      offset += deviceLimit;
      refresh();
    });
  }

  function drawDevice(d) {
    const s = d.status;
    if (!s) {
      facts("device-status", [["Status", "none stored (the device was forgotten)"]]);
    } else {
      facts("device-status", [
        ["State", el("span", { class: `state state-${s.console_state}` }, s.console_state)],
        ["Also", s.states.length > 1 ? s.states.slice(1).join(", ") : "-"],
        ["Version", version(s.version)], ["Floor", dash(s.floor)],
        ["Bad versions", s.bad && s.bad.length ? s.bad.map(version).join(", ") : "-"],
        ["Group", dash(s.group)], ["Bucket", dash(s.bucket)],
        ["Last seen", when(s.last_seen)], ["First seen", when(s.first_seen)],
        ["Last event", s.event ? `${s.event}: ${dash(s.detail)}` : "-"],
        ["Last refusal or revert", dash(s.last_problem)],
        ["Stale because", s.reasons.length ? s.reasons.join("; ") : "-"],
        ["Fail-open domains", s.fail_open.length ? s.fail_open.join(", ") : "-"],
        ["Root version", dash(s.root_version)], ["Agent", dash(s.agent_version)],
        ["Suspect", s.suspect ? "yes (claims a version never published)" : "no"],
        ["Quarantined", s.quarantined ? "yes" : "no"],
      ]);
    }
    fill("device-events", d.events.map((e) => row([when(e.time), e.action, e.who, e.why])),
      "No device events.", 4);
    fill("device-audit", d.audit.map((e) => row([when(e.time), e.action, e.actor, e.host, e.source,
      el("code", {}, detailText(e.detail))])), "No audit entries name this device.", 6);
    fill("device-reports", d.reports.map((r) => row([when(r.time), r.kind, el("code", {}, reportSummary(r.report))])),
      "No reports stored.", 3);
  }

  // ------------------------------------------------------------------ reports, audit

  function drawReports(d) {
    const o = d.overview;
    const dup = o.duplicates ? ` ${plural(o.duplicates, "duplicate")} (the same report from the same device again) ${o.duplicates === 1 ? "is" : "are"} not counted.` : "";
    $("reports-summary").textContent = o.reports
      ? `${o.reports} distinct reports from ${o.devices} devices, newest ${iso(o.newest)}.${dup}`
      : "No reports stored.";
    fill("kind-rows", o.kinds.map((k) => row([k.kind, String(k.reports), String(k.devices), when(k.newest)])),
      "None.", 4);
    fill("domain-rows", o.domains.map((k) => row([dash(k.hostname), dash(k.noted), k.kind, String(k.reports),
      String(k.devices), when(k.newest)])), "None.", 6);
    fill("report-rows", d.recent.map((r) => row([when(r.time), deviceLink(r.device), r.kind,
      reportSummary(r.report), String(r.copies)])), "None.", 5);
  }

  let auditLimit = 100;

  function drawAudit(d) {
    fill("audit-rows", d.entries.map((e) => row([when(e.time), e.action, e.actor, e.host, e.source,
      el("code", {}, detailText(e.detail))], { "data-audit": e.id })), "The audit trail is empty.", 6);
    const older = $("older");
    older.hidden = d.next_before === null || auditLimit >= 500;
  }

  // ------------------------------------------------------------------ the page and its updates

  const id = body.dataset.rollout;
  const device = body.dataset.device;
  const PAGES = {
    overview: { url: () => "/api/overview", draw: drawOverview },
    rollouts: { url: () => "/api/rollouts", draw: drawRollouts },
    rollout: { url: () => `/api/rollouts/${id}`, draw: drawRollout, setup: () => setupActions(id) },
    devices: { url: devicesURL, draw: drawDevices, setup: setupDevices },
    device: { url: () => `/api/devices/${encodeURIComponent(device)}`, draw: drawDevice },
    reports: { url: () => "/api/reports", draw: drawReports },
    audit: { url: () => `/api/audit?limit=${auditLimit}`, draw: drawAudit,
             setup: () => $("older").addEventListener("click", () => {
               auditLimit = Math.min(500, auditLimit + 100);
               refresh();
             }) },
  };
  const current = PAGES[page];
  if (!current) return;

  let busy = false;
  let queued = null; // another draw was asked for while one ran: [stamp]

  async function refresh(stamp) {
    if (busy) {
      queued = [stamp === undefined && queued ? queued[0] : stamp];
      return;
    }
    busy = true;
    try {
      const data = await getJSON(current.url());
      current.draw(data);
      body.dataset.updated = String(stamp === undefined ? data.time : stamp);
      live("");
    } catch (e) {
      if (e.status === 401) {
        location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
        return;
      }
      live(`Could not load: ${e.message}`, true);
    } finally {
      busy = false;
      if (queued) {
        const [next] = queued;
        queued = null;
        refresh(next);
      }
    }
  }

  // One event stream per browser, not per tab: a browser keeps at most 6 HTTP/1.1 connections
  // to a host, and each open stream holds one, so six console tabs would starve every other
  // request. The tab holding the Web Lock reads /api/events and passes each update on to the
  // other tabs (BroadcastChannel); when it closes, the lock and the stream go to another tab.
  // Without Web Locks (plain HTTP off loopback is no secure context) each tab reads its own.
  function listen() {
    if (!window.EventSource) return;
    const channel = window.BroadcastChannel ? new BroadcastChannel("trustfleet-console-events") : null;
    const handle = (d) => {
      if (d.error) {
        live(`The fleet store failed: ${d.error}`, true);
        return;
      }
      refresh(d.time);
    };
    if (channel) channel.addEventListener("message", (e) => handle(e.data));
    const read = () => {
      const events = new EventSource("/api/events");
      events.addEventListener("update", (e) => {
        let d;
        try {
          d = JSON.parse(e.data);
        } catch (err) {
          return;
        }
        if (channel) channel.postMessage(d);
        handle(d);
      });
      events.addEventListener("error", () => {
        if (events.readyState !== EventSource.OPEN) live("Live updates interrupted; reconnecting…", true);
      });
      events.addEventListener("open", () => live(""));
    };
    if (channel && navigator.locks) {
      // Held for the life of this page: the promise never settles.
      navigator.locks.request("trustfleet-console-events", () => new Promise(() => read()));
    } else {
      read();
    }
  }

  if (current.setup) current.setup();
  refresh();
  listen();
})();
