// Dadd dashboard: fills the page named by <body data-page> from the master's
// API. Plain JavaScript, no build step, no library, nothing fetched from
// elsewhere. Data goes into the page only through textContent and DOM
// calls, never as HTML, so a command or a log cannot inject markup.
//
// Live updates are short polls of cheap endpoints (the first page of
// /api/procs, /api/stats, one process, the log from its last byte), paused
// while the tab is hidden.
"use strict";

(() => {
  const TOKEN_KEY = "dadd.apiToken";
  const STATES = ["queued", "init", "setup", "running", "success", "failed", "killed", "lost"];
  const FINAL = new Set(["success", "failed", "killed", "lost"]);
  const PAGE_SIZE = 50;
  // The log shown at first is its last part, so a huge log stays light.
  const LOG_TAIL_BYTES = 256 * 1024;

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers --------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function badge(state) {
    return el("span", { class: "state state-" + state, text: state });
  }

  // ---- formatting -----------------------------------------------------------

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(d) {
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function shortTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    const date = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
    return sameDay ? clock(d) : date + " " + clock(d).slice(0, 5);
  }

  function timeEl(iso) {
    if (!iso) return el("span", { class: "muted", text: "—" });
    const d = new Date(iso);
    return el("time", { datetime: iso, title: d.toLocaleString() }, shortTime(iso));
  }

  function duration(ms) {
    if (!(ms >= 0)) return "";
    const s = ms / 1000;
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.floor(s) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " m " + pad(Math.floor(s % 60)) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + pad(m % 60) + " m";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function age(iso) {
    const ms = Date.now() - new Date(iso).getTime();
    if (ms < 1500) return "just now";
    return duration(Math.max(0, ms)).replace(/\.\d/, "") + " ago";
  }

  function bytes(n) {
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let i = -1;
    do {
      v /= 1024;
      i++;
    } while (v >= 1024 && i < units.length - 1);
    return v.toFixed(v < 10 ? 1 : 0) + " " + units[i];
  }

  function command(cmd) {
    return (cmd || [])
      .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'"))
      .join(" ");
  }

  function exitText(p) {
    if (p.exit_code !== null && p.exit_code !== undefined) return String(p.exit_code);
    if (p.signal !== null && p.signal !== undefined) return "signal " + p.signal;
    return "";
  }

  // Elements whose text is a clock: a duration still running, or an age.
  function tickNow() {
    for (const node of document.querySelectorAll("[data-since]")) {
      const since = new Date(node.dataset.since).getTime();
      setText(node, duration(Date.now() - since));
    }
    for (const node of document.querySelectorAll("[data-age]")) {
      setText(node, age(node.dataset.age));
    }
  }

  // The running time of a process: ticking while it runs, fixed once over.
  function durationOf(p, node) {
    const start = p.started_at;
    if (!start) {
      delete node.dataset.since;
      setText(node, "");
      return;
    }
    if (p.ended_at || FINAL.has(p.state)) {
      delete node.dataset.since;
      const end = p.ended_at ? new Date(p.ended_at).getTime() : Date.now();
      setText(node, duration(end - new Date(start).getTime()));
    } else {
      node.dataset.since = start;
      setText(node, duration(Date.now() - new Date(start).getTime()));
    }
  }

  // ---- problems and connection state ---------------------------------------

  function showProblem(message, retry) {
    const box = $("problem");
    box.replaceChildren(message);
    if (retry) {
      box.append(el("button", { type: "button", onclick: () => { hideProblem(); retry(); } }, retry === askAgain ? "Enter a token" : "Try again"));
    }
    box.hidden = false;
  }

  function hideProblem() {
    const box = $("problem");
    if (!box.hidden) {
      box.hidden = true;
      box.replaceChildren();
    }
  }

  function connection(ok, text) {
    const c = $("conn");
    c.classList.toggle("down", !ok);
    setText(c, text);
  }

  // ---- the API, with the token asked for when the master wants one ---------

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* storage refused: the token lives as long as the page */
    }
    memoryToken = t || null;
    $("forget-token").hidden = !t;
  }

  let memoryToken = null;
  let asking = null;

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  class NeedToken extends Error {}

  // One dialog at a time, whatever number of requests met a 401.
  function askToken(reason) {
    if (asking) return asking;
    asking = new Promise((resolve, reject) => {
      const dialog = $("auth");
      const form = $("auth-form");
      const input = $("auth-token");
      const err = $("auth-error");
      err.hidden = !reason;
      err.textContent = reason || "";
      input.value = "";
      const done = (ok) => {
        form.removeEventListener("submit", onSubmit);
        $("auth-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) dialog.close();
        asking = null;
        if (ok) resolve();
        else reject(new NeedToken("an API token is needed to see this master's data"));
      };
      const onSubmit = (ev) => {
        ev.preventDefault();
        const t = input.value.trim();
        if (!t) return;
        setToken(t);
        done(true);
      };
      const onCancel = (ev) => {
        ev.preventDefault();
        done(false);
      };
      form.addEventListener("submit", onSubmit);
      $("auth-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      input.focus();
    });
    return asking;
  }

  async function errorOf(resp) {
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      /* not JSON */
    }
    const msg = body && body.error ? body.error : "the master answered " + resp.status + " " + resp.statusText;
    return new ApiError(resp.status, msg, body);
  }

  // fetch() with the bearer token; a 401 (or a 403 to a token we sent) asks
  // for a token and tries again. Non-2xx answers become ApiError.
  async function api(path, opts = {}) {
    let reason = null;
    for (let attempt = 0; attempt < 4; attempt++) {
      if (reason !== null) await askToken(reason);
      const headers = new Headers(opts.headers || {});
      const t = memoryToken || token();
      if (t) headers.set("Authorization", "Bearer " + t);
      let resp;
      try {
        resp = await fetch(path, { ...opts, headers, cache: "no-store" });
      } catch (e) {
        throw new ApiError(0, "the master cannot be reached (" + e.message + ")", null);
      }
      if (resp.status === 401) {
        reason = t ? "That token was not accepted." : "";
        if (t) setToken(null);
        continue;
      }
      if (resp.status === 403 && t) {
        setToken(null);
        reason = "That token is not accepted by this master: use one of its auth.api_tokens.";
        continue;
      }
      if (!resp.ok && resp.status !== 304) throw await errorOf(resp);
      return resp;
    }
    throw new NeedToken("no accepted API token");
  }

  async function apiJson(path, opts) {
    const resp = await api(path, opts);
    return resp.json();
  }

  // ---- polling ---------------------------------------------------------------

  // Polls stopped for want of a token; they start again once one is given.
  const stalled = new Set();

  function askAgain() {
    hideProblem();
    askToken("")
      .then(() => {
        const all = [...stalled];
        stalled.clear();
        for (const c of all) c.now();
      })
      .catch(() => showProblem("This master needs an API token to show its data.", askAgain));
  }

  // Runs `step` now and then every `ms` after it ends; paused while the tab
  // is hidden; a failure is shown and retried with a longer pause.
  function poll(step, ms) {
    let timer = null;
    let stopped = false;
    let running = false;
    const run = async () => {
      timer = null;
      if (stopped || running) return;
      if (document.hidden) return; // resumed by visibilitychange
      running = true;
      let wait = ms;
      try {
        const more = await step();
        connection(true, "Live");
        if (more === false) stopped = true;
      } catch (e) {
        if (e instanceof NeedToken) {
          connection(false, "Not signed in");
          showProblem("This master needs an API token to show its data.", askAgain);
          stalled.add(control);
          stopped = true;
        } else {
          connection(false, "Connection lost: retrying");
          wait = Math.max(ms, 5000);
          if (e instanceof ApiError && e.status !== 0 && e.status < 500) showProblem(e.message);
        }
      } finally {
        running = false;
      }
      if (!stopped && !timer) timer = setTimeout(run, wait);
    };
    const control = {
      now() {
        stopped = false;
        if (timer) clearTimeout(timer);
        timer = null;
        return run();
      },
      stop() {
        stopped = true;
        if (timer) clearTimeout(timer);
      },
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !stopped && !timer && !running) control.now();
    });
    run();
    return control;
  }

  // ---- processes page --------------------------------------------------------

  function procsPage() {
    const tbody = $("procs");
    const select = $("state-filter");
    const status = $("procs-status");
    const rows = new Map(); // id -> tr
    // Keyset pages: cursors[i] is the `next` that opens page i (page 0: none).
    let cursors = [null];
    let nextCursor = null;
    let firstLoad = true;

    const params = new URLSearchParams(location.search);
    const initial = params.get("state") || "";
    if (![...select.options].some((o) => o.value === initial)) {
      select.append(el("option", { value: initial }, initial));
    }
    select.value = initial;

    function filterValue() {
      return select.value;
    }

    function rowFor(p) {
      let tr = rows.get(p.id);
      if (!tr) {
        const link = el("a", { href: "/ui/procs/" + p.id, "aria-label": "Process " + p.id }, String(p.id));
        tr = el(
          "tr",
          { "data-id": p.id, class: firstLoad ? null : "fresh" },
          el("td", { class: "num" }, link),
          el("td", { class: "st" }),
          el("td", { class: "host" }),
          el("td", { class: "cmd" }, el("code")),
          el("td", { class: "started" }),
          el("td", { class: "num dur" }),
          el("td", { class: "num exit" }),
        );
        rows.set(p.id, tr);
      }
      const [, st, host, cmd, started, dur, exit] = tr.children;
      if (tr.dataset.state !== p.state) {
        tr.dataset.state = p.state;
        st.replaceChildren(badge(p.state));
      }
      setText(host, p.host || "");
      const c = command(p.cmd);
      setText(cmd.firstChild, c);
      cmd.title = c;
      const startedIso = p.started_at || "";
      if (started.dataset.iso !== startedIso) {
        started.dataset.iso = startedIso;
        started.replaceChildren(p.started_at ? timeEl(p.started_at) : el("span", { class: "muted", text: p.state === "queued" ? "waiting" : "—" }));
      }
      durationOf(p, dur);
      setText(exit, exitText(p));
      exit.classList.toggle("exit-bad", (p.exit_code !== null && p.exit_code !== undefined && p.exit_code !== 0) || (p.signal !== null && p.signal !== undefined));
      return tr;
    }

    function render(list) {
      const keep = new Set(list.map((p) => p.id));
      for (const [id, tr] of rows) {
        if (!keep.has(id)) {
          tr.remove();
          rows.delete(id);
        }
      }
      // New rows are inserted; rows already there stay put (keeps focus).
      let ref = tbody.firstElementChild;
      for (const p of list) {
        const tr = rowFor(p);
        if (tr === ref) {
          ref = ref.nextElementSibling;
        } else {
          tbody.insertBefore(tr, ref);
        }
      }
      firstLoad = false;
      const page = cursors.length;
      const f = filterValue();
      if (list.length === 0) {
        status.textContent = page > 1 ? "No older processes." : f ? "No process in this state." : "No process yet: submit one with dadd submit SPEC.json.";
      } else {
        status.textContent = "Showing " + list.length + (list.length === 1 ? " process" : " processes") + (f ? " (" + select.options[select.selectedIndex].text + ")" : "") + ".";
      }
      $("page-no").textContent = "Page " + page;
      $("newer").disabled = page <= 1;
      $("older").disabled = !nextCursor;
    }

    async function loadPage() {
      const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
      const f = filterValue();
      if (f) q.set("state", f);
      const cursor = cursors[cursors.length - 1];
      if (cursor) q.set("next", cursor);
      const list = await apiJson("/api/procs?" + q.toString());
      nextCursor = list.next || null;
      render(list.procs || []);
      hideProblem();
    }

    const procsPoll = poll(loadPage, 2000);

    function reset() {
      cursors = [null];
      for (const tr of rows.values()) tr.remove();
      rows.clear();
      firstLoad = true;
      status.textContent = "Loading…";
      procsPoll.now();
    }

    select.addEventListener("change", () => {
      const q = new URLSearchParams(location.search);
      if (select.value) q.set("state", select.value);
      else q.delete("state");
      const s = q.toString();
      history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
      syncPressed();
      reset();
    });
    $("filter").addEventListener("submit", (ev) => ev.preventDefault());
    $("older").addEventListener("click", () => {
      if (!nextCursor) return;
      cursors.push(nextCursor);
      for (const tr of rows.values()) tr.remove();
      rows.clear();
      firstLoad = true;
      procsPoll.now();
      $("procs-title").scrollIntoView({ block: "start" });
    });
    $("newer").addEventListener("click", () => {
      if (cursors.length <= 1) return;
      cursors.pop();
      for (const tr of rows.values()) tr.remove();
      rows.clear();
      firstLoad = true;
      procsPoll.now();
    });

    // ---- the summary: unfinished states now, final ones over the hour
    const countButtons = new Map();
    for (const s of STATES) {
      const n = el("span", { class: "count", text: "–" });
      const b = el(
        "button",
        { type: "button", "aria-pressed": "false", title: "Show only " + s + " processes" },
        badge(s),
        n,
      );
      const counts = FINAL.has(s) ? $("final-counts") : $("live-counts");
      b.addEventListener("click", () => {
        select.value = select.value === s ? "" : s;
        select.dispatchEvent(new Event("change"));
      });
      countButtons.set(s, { b, n });
      counts.append(el("li", {}, b));
    }
    function syncPressed() {
      for (const [s, { b }] of countButtons) b.setAttribute("aria-pressed", String(select.value === s));
    }
    syncPressed();

    async function loadStats() {
      const s = await apiJson("/api/stats");
      for (const [state, { b, n }] of countButtons) {
        const v = (s.by_state && s.by_state[state]) || 0;
        setText(n, String(v));
        const when = FINAL.has(state) ? " in the last hour" : " now";
        b.setAttribute("aria-label", v + " " + state + when + ", show only " + state);
      }
      setText($("hosts-up"), s.hosts_up + " of " + s.hosts_total);
      drawChart($("chart"), s.per_minute || [], new Date(s.window_start));
    }
    poll(loadStats, 5000);
  }

  // A bar per minute, as SVG; the numbers are also in the figure's text.
  function drawChart(box, perMinute, start) {
    const NS = "http://www.w3.org/2000/svg";
    const n = perMinute.length || 60;
    const max = Math.max(1, ...perMinute);
    const total = perMinute.reduce((a, b) => a + b, 0);
    const peak = Math.max(0, ...perMinute);
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + n * 4 + " 40");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const label = total + " submitted in the last hour; at most " + peak + " in a minute";
    svg.setAttribute("aria-label", label);
    perMinute.forEach((v, i) => {
      if (v <= 0) return;
      const h = Math.max(1.5, (v / max) * 38);
      const r = document.createElementNS(NS, "rect");
      r.setAttribute("x", String(i * 4 + 0.5));
      r.setAttribute("width", "3");
      r.setAttribute("y", String(40 - h));
      r.setAttribute("height", String(h));
      r.setAttribute("class", i === n - 1 ? "bar now" : "bar");
      const t = document.createElementNS(NS, "title");
      const at = new Date(start.getTime() + i * 60000);
      t.textContent = pad(at.getHours()) + ":" + pad(at.getMinutes()) + " — " + v;
      r.append(t);
      svg.append(r);
    });
    const base = document.createElementNS(NS, "line");
    base.setAttribute("x1", "0");
    base.setAttribute("x2", String(n * 4));
    base.setAttribute("y1", "39.5");
    base.setAttribute("y2", "39.5");
    base.setAttribute("class", "base");
    svg.append(base);
    const legend = el(
      "div",
      { class: "chart-legend", "aria-hidden": "true" },
      el("span", {}, clock(start).slice(0, 5)),
      el("span", {}, total + " in the hour, peak " + peak + "/min"),
      el("span", {}, "now"),
    );
    box.replaceChildren(svg, legend);
  }

  // ---- one process -----------------------------------------------------------

  // Every value under `config` is hidden; URL passwords too.
  function masked(spec) {
    const hide = (v) => {
      if (v && typeof v === "object" && !Array.isArray(v)) {
        const out = {};
        for (const k of Object.keys(v)) out[k] = hide(v[k]);
        return out;
      }
      if (Array.isArray(v)) return v.map(hide);
      return "•••••• (hidden)";
    };
    const scrub = (v) => {
      if (typeof v === "string") return v.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/:@\s]*):[^@/\s]*@/i, "$1:••••@");
      if (Array.isArray(v)) return v.map(scrub);
      if (v && typeof v === "object") {
        const out = {};
        for (const k of Object.keys(v)) out[k] = scrub(v[k]);
        return out;
      }
      return v;
    };
    if (!spec || typeof spec !== "object") return spec;
    const out = {};
    for (const k of Object.keys(spec)) {
      out[k] = k === "config" ? hide(spec[k]) : k === "download_urls" ? scrub(spec[k]) : spec[k];
    }
    return out;
  }

  function procPage() {
    const m = location.pathname.match(/\/ui\/procs\/(\d+)\/?$/);
    const id = m ? m[1] : null;
    if (!id) return;
    document.title = "Process " + id + " · Dadd";
    $("proc-title").textContent = "Process " + id;
    const logUrl = "/api/procs/" + id + "/logfile";
    const logBox = $("log");
    const killBtn = $("kill");
    let state = null;
    let offset = null; // the next byte of the log to fetch
    const decoder = new TextDecoder("utf-8");
    let lastHistory = "";
    let logSize = 0;

    setupDownload($("log-download"), logUrl, "process-" + id + ".log");

    function facts(p, d) {
      const dl = $("facts");
      const dur = el("span");
      durationOf(p, dur);
      const items = [
        ["State", badge(p.state)],
        ["Command", el("code", {}, command(p.cmd))],
        ["Host", p.host || el("span", { class: "muted", text: "not placed yet" })],
        ["PID", p.pid ?? "—"],
        ["Exit code", exitText(p) || "—"],
        ["Reason", p.reason || "—"],
        ["Submitted", timeEl(p.created_at)],
        ["Started", timeEl(p.started_at)],
        ["Ended", timeEl(p.ended_at)],
        ["Duration", p.started_at ? dur : "—"],
        ["Log", bytes(d.log_size || 0)],
      ];
      dl.replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    }

    function timeline(history) {
      const key = JSON.stringify(history);
      if (key === lastHistory) return;
      lastHistory = key;
      const ol = $("timeline");
      let prev = null;
      ol.replaceChildren(
        ...history.map((h) => {
          const at = new Date(h.at).getTime();
          const li = el(
            "li",
            {},
            badge(h.state),
            el("span", { class: "when" }, timeEl(h.at)),
            prev !== null ? el("span", { class: "after" }, "+" + duration(at - prev)) : null,
            h.reason ? el("span", { class: "reason" }, h.reason) : null,
          );
          prev = at;
          return li;
        }),
      );
    }

    async function loadDetail() {
      let d;
      try {
        d = await apiJson("/api/procs/" + id);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          showProblem("There is no process " + id + " (it may have been pruned by retention).");
          killBtn.hidden = true;
          logPoll.stop();
          return false;
        }
        throw e;
      }
      hideProblem();
      state = d.state;
      logSize = d.log_size || 0;
      const stateBox = $("proc-state");
      if (stateBox.dataset.state !== d.state) {
        stateBox.dataset.state = d.state;
        stateBox.replaceChildren(badge(d.state));
      }
      killBtn.hidden = FINAL.has(d.state);
      if (FINAL.has(d.state)) {
        setText($("kill-status"), "");
        // Over: fetch the rest of the log now rather than at the next tick.
        if (offset !== null) logPoll.now();
      }
      facts(d, d);
      timeline(d.history || []);
      const spec = JSON.stringify(masked(d.spec), null, 2);
      setText($("spec"), spec);
      if (offset === null) {
        // First look: only the log's last part, if it is long.
        offset = Math.max(0, logSize - LOG_TAIL_BYTES);
        const skipped = $("log-skipped");
        skipped.hidden = offset === 0;
        if (offset > 0) skipped.textContent = "The first " + bytes(offset) + " are not shown here; download the log to see it all.";
        logPoll.now();
      }
      return !FINAL.has(d.state);
    }

    async function loadLog() {
      if (offset === null) return true;
      const final = state !== null && FINAL.has(state);
      const resp = await api(logUrl + "?offset=" + offset);
      const buf = new Uint8Array(await resp.arrayBuffer());
      if (buf.length > 0) {
        offset += buf.length;
        const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 30;
        logBox.append(decoder.decode(buf, { stream: true }));
        if (atBottom) logBox.scrollTop = logBox.scrollHeight;
      }
      if (final) {
        // The runner sends the whole log before its final report, so
        // once the state is final what we hold is the whole log.
        const rest = decoder.decode();
        if (rest) logBox.append(rest);
        setText($("log-status"), offset === 0 ? "No output." : "Complete, " + bytes(offset) + ".");
        return false;
      }
      setText($("log-status"), "Following… " + bytes(offset));
      return true;
    }

    const detailPoll = poll(loadDetail, 1500);
    const logPoll = poll(loadLog, 1000);

    killBtn.addEventListener("click", async () => {
      if (!window.confirm("Kill process " + id + "? The runner stops the command's whole process group.")) return;
      killBtn.disabled = true;
      setText($("kill-status"), "Sending the kill…");
      try {
        const resp = await api("/api/procs/" + id + "/kill", { method: "POST" });
        setText(
          $("kill-status"),
          resp.status === 202 ? "Kill sent to the worker; waiting for the runner to report killed." : "Killed.",
        );
      } catch (e) {
        setText($("kill-status"), "");
        showProblem("The kill failed: " + e.message);
      } finally {
        killBtn.disabled = false;
      }
      detailPoll.now();
    });
  }

  // A download link that sends the token: without one it is a plain link;
  // with one the file is fetched and handed to the browser as a blob.
  function setupDownload(link, url, name) {
    link.href = url;
    link.setAttribute("download", name);
    link.addEventListener("click", async (ev) => {
      if (!(memoryToken || token())) return; // a plain link works
      ev.preventDefault();
      try {
        const resp = await api(url);
        const blob = await resp.blob();
        const obj = URL.createObjectURL(blob);
        const a = el("a", { href: obj, download: name, hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(obj), 60000);
      } catch (e) {
        showProblem("The download failed: " + e.message);
      }
    });
  }

  // ---- hosts -----------------------------------------------------------------

  function hostsPage() {
    const tbody = $("hosts");
    async function load() {
      const hosts = await apiJson("/api/hosts");
      hideProblem();
      const up = hosts.filter((h) => h.status === "up").length;
      setText($("hosts-summary"), up + " of " + hosts.length + (hosts.length === 1 ? " host" : " hosts") + " up.");
      $("hosts-empty").hidden = hosts.length > 0;
      tbody.replaceChildren(
        ...hosts.map((h) => {
          const pct = h.max_procs > 0 ? Math.min(100, (100 * h.running) / h.max_procs) : 0;
          const fill = el("span");
          fill.style.width = pct + "%";
          return el(
            "tr",
            { "data-address": h.address },
            el("td", {}, el("code", {}, h.address)),
            el("td", {}, badge(h.status)),
            el("td", {}, el("span", { "data-age": h.last_heartbeat, title: new Date(h.last_heartbeat).toLocaleString() }, age(h.last_heartbeat))),
            el(
              "td",
              {},
              el("span", { class: "num" }, h.running + " / " + h.max_procs),
              el("span", { class: "meter", "aria-hidden": "true" }, fill),
            ),
            el("td", {}, h.version || el("span", { class: "muted", text: "unknown" })),
            el("td", {}, timeEl(h.registered_at)),
          );
        }),
      );
    }
    poll(load, 3000);
  }

  // ---- files -----------------------------------------------------------------

  function fileUrl(path) {
    return "/files/" + path.split("/").map(encodeURIComponent).join("/");
  }

  function filesPage() {
    const tbody = $("files");
    const status = $("files-status");
    const fileInput = $("upload-file");
    const pathInput = $("upload-path");
    const uploadStatus = $("upload-status");

    async function load() {
      const files = await apiJson("/files/");
      hideProblem();
      status.textContent = files.length === 0 ? "The store is empty." : files.length + (files.length === 1 ? " file." : " files.");
      tbody.replaceChildren(
        ...files.map((f) => {
          const link = el("a", { href: fileUrl(f.path) }, f.path);
          setupDownload(link, fileUrl(f.path), f.path.split("/").pop());
          const del = el("button", { type: "button", class: "link danger-text", "aria-label": "Delete " + f.path }, "Delete");
          del.addEventListener("click", async () => {
            if (!window.confirm("Delete " + f.path + " from the master's file store?")) return;
            del.disabled = true;
            try {
              await api(fileUrl(f.path), { method: "DELETE" });
              uploadStatus.className = "ok";
              uploadStatus.textContent = "Deleted " + f.path + ".";
            } catch (e) {
              showProblem("The delete failed: " + e.message);
            }
            filesPoll.now();
          });
          return el(
            "tr",
            { "data-path": f.path },
            el("td", {}, link),
            el("td", { class: "num" }, bytes(f.size)),
            el("td", {}, el("code", { title: f.sha256 }, f.sha256.slice(0, 12) + "…")),
            el("td", {}, timeEl(f.modified)),
            el("td", { class: "num" }, del),
          );
        }),
      );
      return true;
    }
    const filesPoll = poll(load, 10000);

    fileInput.addEventListener("change", () => {
      const f = fileInput.files[0];
      if (f && !pathInput.value) pathInput.placeholder = f.name;
    });

    $("upload").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = fileInput.files[0];
      if (!f) {
        uploadStatus.className = "field-error";
        uploadStatus.textContent = "Choose a file first.";
        fileInput.focus();
        return;
      }
      const path = (pathInput.value.trim() || f.name).replace(/^\/+/, "");
      const button = $("upload-submit");
      button.disabled = true;
      uploadStatus.className = "";
      uploadStatus.textContent = "Uploading " + path + " (" + bytes(f.size) + ")…";
      try {
        const resp = await api(fileUrl(path), {
          method: "PUT",
          body: f,
          headers: { "Content-Type": "application/octet-stream" },
        });
        const entry = await resp.json();
        uploadStatus.className = "ok";
        uploadStatus.textContent = "Stored " + entry.path + " (" + bytes(entry.size) + ", sha256 " + entry.sha256.slice(0, 12) + "…).";
        $("upload").reset();
        pathInput.placeholder = "the file's name";
      } catch (e) {
        uploadStatus.className = "field-error";
        uploadStatus.textContent = "The upload failed: " + e.message;
      } finally {
        button.disabled = false;
      }
      filesPoll.now();
    });
  }

  // ---- start -----------------------------------------------------------------

  function start() {
    memoryToken = token();
    $("forget-token").hidden = !memoryToken;
    $("forget-token").addEventListener("click", () => {
      setToken(null);
      location.reload();
    });
    setInterval(tickNow, 1000);
    const page = document.body.dataset.page;
    if (page === "procs") procsPage();
    else if (page === "proc") procPage();
    else if (page === "hosts") hostsPage();
    else if (page === "files") filesPage();
  }

  start();
})();
