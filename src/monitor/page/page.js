// zbridge's operator page: asks /status, /health, /history and /events of
// the bridge that served it, once a second, and draws what they say.
// Read-only: it only ever GETs. Every value from the bridge goes into the
// page as text (textContent) or as a number in an SVG attribute, never as
// HTML, so a target named "<script>" shows as those characters.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const EVERY_MS = 1000;
  const WINDOW_S = 900;
  const EVENTS_SHOWN = 100;

  const page = {
    history: [],
    historySeq: 0,
    events: new Map(),
    eventsSeq: 0,
    lastAnswer: null,
    status: null,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function isNum(x) {
    return typeof x === "number" && Number.isFinite(x);
  }

  function num(x, digits) {
    if (!isNum(x)) return "–";
    if (digits === undefined) digits = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2;
    return x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function duration(s) {
    if (!isNum(s)) return "–";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    const m = Math.floor(s / 60);
    if (m < 120) return m + " min " + Math.floor(s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function clock(unix) {
    if (!isNum(unix)) return "–";
    const d = new Date(unix * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  function text(x) {
    if (x === undefined || x === null) return "–";
    if (typeof x === "string") return x;
    return JSON.stringify(x);
  }

  async function get(path) {
    const answer = await fetch(path, { cache: "no-store", credentials: "omit" });
    const body = await answer.json();
    return { code: answer.status, body: body };
  }

  // ---- the pair ---------------------------------------------------------

  function fields(dl, rows) {
    dl.replaceChildren();
    for (const [name, value, cls] of rows) {
      dl.append(el("dt", name), el("dd", value, cls));
    }
  }

  function badge(span, role, stale) {
    span.textContent = role || "unknown";
    span.className = "role " + (stale ? "stale" : role === "active" || role === "passive" ? role : "unknown");
  }

  function sum(object) {
    let total = 0;
    for (const v of Object.values(object || {})) if (isNum(v)) total += v;
    return total;
  }

  function nonZero(object) {
    const parts = [];
    for (const [k, v] of Object.entries(object || {})) if (isNum(v) && v > 0) parts.push(k + " " + num(v, 0));
    return parts.length ? parts.join(" · ") : "none";
  }

  function drawPair(st, stale) {
    badge($("this-role"), st.role, stale);
    fields($("this-fields"), [
      ["node", text(st.node)],
      ["role", text(st.role)],
      ["epoch", text(st.epoch)],
      ["uptime", duration(st.uptime_s)],
      ["frontend ports", (st.frontend_ports || []).join(", ") || "none bound", (st.frontend_ports || []).length ? "" : "bad"],
      ["clients connected", num(st.clients_connected, 0)],
      ["takeovers", num(st.failovers_total, 0)],
      ["heartbeats rejected", nonZero(st.heartbeats_rejected_total), sum(st.heartbeats_rejected_total) ? "warn" : ""],
      ["CURVE refused", num(st.curve_refused_total, 0)],
      ["config generation", text(st.config_generation)],
    ]);
    const peer = st.peer || {};
    const heard = peer.last_heartbeat_age_s !== undefined;
    $("peer").classList.toggle("gone", !peer.alive);
    $("peer-hint").textContent = peer.alive
      ? "As its heartbeats tell it. Its own page is on its monitoring port."
      : heard ? "Not heard for " + duration(peer.last_heartbeat_age_s) + ": what its last heartbeat said." : "No heartbeat heard from it yet.";
    badge($("peer-role"), heard ? peer.role : "unknown", stale || !peer.alive);
    const age = heard ? duration(peer.last_heartbeat_age_s) + " ago" : "never heard";
    fields($("peer-fields"), [
      ["node", text(peer.node)],
      ["alive", peer.alive ? "yes" : "no", peer.alive ? "good" : "bad"],
      ["last heartbeat", age, peer.alive ? "" : "bad"],
      ["state", text(peer.state), peer.state === "leaving" ? "warn" : ""],
      ["role", text(peer.role)],
      ["epoch", text(peer.epoch)],
      ["uptime", duration(peer.uptime_s)],
      ["load", isNum(peer.load) ? num(peer.load * 100, 0) + " %" : "–"],
      ["frontend port", text(peer.port)],
    ]);
  }

  // What the operator sees first: is the pair healthy, and if not, why.
  function verdict(st, health) {
    const peer = st.peer || {};
    const me = text(st.node) + " is " + text(st.role);
    if (health.code !== 200) {
      return ["bad", "UNAVAILABLE", text(health.body.reason || "the bridge says it is not healthy")];
    }
    if (st.redundancy !== "ok") {
      const why = peer.last_heartbeat_age_s === undefined
        ? "no heartbeat heard from the peer since this bridge started"
        : "no heartbeat from the peer (" + text(peer.node) + ") for " + duration(peer.last_heartbeat_age_s);
      return ["warn", "DEGRADED", why + ": " + me + " and runs alone, with no standby"];
    }
    if (peer.state === "leaving") {
      return ["warn", "HANDOVER", "the peer (" + text(peer.node) + ") is leaving; " + me];
    }
    if (peer.role === st.role) {
      return ["warn", "CHECK", "both bridges say they are " + text(st.role)];
    }
    const problems = [];
    for (const [name, t] of Object.entries(st.targets || {})) {
      if (t.breaker === "open") problems.push("target " + name + ": breaker open");
      else if (t.connected === false && t.handshake_refused) problems.push("target " + name + ": " + text(t.handshake_refused));
      else if (t.connected === false && !(t.in_flight > 0)) problems.push("target " + name + ": not connected");
    }
    for (const p of health.body.problems || []) problems.push(text(p));
    const pair = me + ", " + text(peer.node) + " is " + text(peer.role) + "; redundancy ok";
    if (problems.length) return ["warn", "PAIR OK, TARGETS NOT", problems.join("; ") + " (" + pair + ")"];
    return ["ok", "HEALTHY", pair];
  }

  function banner(cls, word, why) {
    $("banner").className = "banner " + cls;
    $("verdict").textContent = word;
    $("why").textContent = why;
  }

  // ---- targets and streams ----------------------------------------------

  function cell(row, value, cls) {
    row.append(el("td", value, cls));
  }

  function drawTargets(st, last) {
    const body = $("targets").tBodies[0];
    body.replaceChildren();
    const recent = (last && last.targets) || {};
    for (const name of Object.keys(st.targets || {}).sort()) {
      const t = st.targets[name];
      const row = el("tr");
      cell(row, name);
      cell(row, text(t.endpoint), "endpoint");
      // A service that ends the bridge's handshake says why (a PUB, CURVE).
      const refused = t.connected === false && t.handshake_refused ? ": " + text(t.handshake_refused) : "";
      cell(row, t.connected === undefined ? "–" : t.connected ? "yes" : "no" + refused, t.connected === false ? "bad" : "good");
      cell(row, text(t.breaker), t.breaker === "closed" ? "good" : t.breaker === "open" ? "bad" : "warn");
      cell(row, num(t.in_flight, 0), "n");
      cell(row, num(t.waiting_for_backend, 0), "n");
      cell(row, num(recent[name] ? recent[name].requests_per_s : NaN, 1), "n");
      const latency = t.latency_ms || {};
      cell(row, num(latency.p50), "n");
      cell(row, num(latency.p99), "n");
      cell(row, num(t.requests_total, 0), "n");
      cell(row, num(t.replies_total, 0), "n");
      body.append(row);
    }
    const errors = nonZero(st.errors_total);
    $("errors").textContent = errors;
    $("errors").className = errors === "none" ? "good" : "warn";
  }

  function drawStreams(st, last) {
    const streams = st.streams || {};
    const names = Object.keys(streams).sort();
    $("streams-section").hidden = names.length === 0 && st.stream_thread === undefined;
    const body = $("streams").tBodies[0];
    body.replaceChildren();
    const recent = (last && last.streams) || {};
    for (const name of names) {
      const s = streams[name];
      const row = el("tr");
      cell(row, name);
      cell(row, text(s.endpoint), "endpoint");
      cell(row, s.up ? "connected" : "not connected", s.up ? "good" : "bad");
      cell(row, num(recent[name] ? recent[name].messages_per_s : NaN, 1), "n");
      cell(row, num(s.subscriptions, 0), "n");
      cell(row, num(s.received_total, 0), "n");
      cell(row, num(s.published_total, 0), "n");
      cell(row, num(s.subscriber_stalls_total, 0), "n");
      body.append(row);
    }
    let note = "Subscribers on this bridge's pub ports: " + num(st.stream_subscribers, 0);
    if (st.stream_thread === "stopped") note += " · the stream thread has stopped: restart the bridge";
    $("stream-subscribers").textContent = note;
  }

  // ---- charts -------------------------------------------------------------

  function svg(tag, attributes) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, String(v));
    return e;
  }

  function chart(id, samples, value, digits) {
    const figure = $(id);
    const plot = figure.querySelector("svg");
    plot.replaceChildren();
    const W = 300, H = 80;
    const end = samples.length ? samples[samples.length - 1].time : 0;
    const start = end - span(samples);
    let max = 0;
    for (const s of samples) {
      const v = value(s);
      if (isNum(v) && v > max) max = v;
    }
    const top = max > 0 ? max * 1.15 : 1;
    const x = (t) => ((t - start) / (end - start)) * W;
    const y = (v) => H - (v / top) * H;
    plot.append(svg("line", { x1: 0, x2: W, y1: H / 2, y2: H / 2, class: "grid" }));
    // Seconds this bridge was passive, shaded.
    let from = null;
    samples.forEach((s, i) => {
      const passive = s.role !== "active";
      if (passive && from === null) from = s.time - 1;
      const last = i === samples.length - 1;
      if (from !== null && (!passive || last)) {
        const to = passive ? s.time : s.time - 1;
        plot.append(svg("rect", { x: x(from).toFixed(1), y: 0, width: Math.max(0.5, x(to) - x(from)).toFixed(1), height: H, class: "passive" }));
        from = null;
      }
    });
    // A line per run of seconds with a value (no latency without requests).
    let points = [];
    const flush = () => {
      if (points.length) plot.append(svg("polyline", { points: points.join(" ") }));
      points = [];
    };
    let previous = null;
    for (const s of samples) {
      const v = value(s);
      if (!isNum(v) || (previous !== null && s.time - previous > 3)) flush();
      if (isNum(v)) points.push(x(s.time).toFixed(1) + "," + y(v).toFixed(1));
      previous = s.time;
    }
    flush();
    const last = samples.length ? value(samples[samples.length - 1]) : NaN;
    figure.querySelector(".now").textContent = num(last, digits);
    figure.querySelector(".max").textContent = "max " + num(max, digits);
  }

  // The time the charts span: what there is, from one minute to fifteen.
  function span(samples) {
    const have = samples.length ? samples[samples.length - 1].time - samples[0].time : 0;
    return Math.min(WINDOW_S, Math.max(60, Math.ceil(have / 60) * 60));
  }

  function drawCharts() {
    const samples = page.history;
    $("chart-span").textContent = "Last " + span(samples) / 60 + " min";
    chart("chart-rps", samples, (s) => s.requests_per_s, 1);
    chart("chart-eps", samples, (s) => s.errors_per_s, 1);
    chart("chart-p99", samples, (s) => s.p99_ms);
  }

  // ---- events -------------------------------------------------------------

  function describe(e) {
    switch (e.event) {
      case "role": {
        const words = text(e.from) + " → " + text(e.to) + " (" + text(e.reason) + ", epoch " + text(e.epoch) + ")";
        if (e.from === "passive" && e.to === "active") return ["bad", "Failover: took over as active, role " + words];
        if (e.from === "listening") return ["", "Joined the pair: role " + words];
        if (e.from === "active") return ["warn", "Stepped down: role " + words];
        return ["warn", "Role change: " + words];
      }
      case "ready":
        return ["good", "Started: " + text(e.node) + " as " + text(e.role) + ", version " + text(e.version) + ", pid " + text(e.pid)];
      case "bound":
        return ["", "Bound the " + text(e.port) + " port: " + text(e.endpoint)];
      case "released":
        return ["", "Released the " + text(e.port) + " port: " + text(e.endpoint)];
      case "bind_failed":
        return ["bad", "Could not take the " + text(e.port) + " port: another process holds it (a hung active?)"];
      case "reloaded":
        return ["good", "Config reloaded: generation " + text(e.generation) + (e.restart_needed && (e.restart_needed.length || e.restart_needed === true) ? "; needs a restart for: " + text(e.restart_needed) : "")];
      case "reload_rejected":
        return ["bad", "Reload refused, the old config stays: " + text(e.key) + ": " + text(e.message)];
      case "breaker":
        return [e.to === "open" ? "bad" : e.to === "closed" ? "good" : "warn", "Breaker of " + text(e.target) + ": " + text(e.from) + " → " + text(e.to) + " (" + text(e.reason) + ")"];
      case "peer":
        return e.alive
          ? ["good", "Peer heard: " + text(e.node) + " (" + text(e.role) + ")"]
          : ["bad", "Peer lost: no heartbeat from " + text(e.node) + " for " + duration(e.last_heartbeat_age_s)];
      case "stream":
        return [e.up ? "good" : "bad", "Stream " + text(e.stream) + ": upstream " + (e.up ? "connected" : "lost") + " (" + text(e.endpoint) + ")"];
      case "curve_refused":
        return ["warn", "CURVE: client connections refused (key not admitted)"];
      case "heartbeats_rejected":
        return ["warn", "Heartbeats rejected: " + text(e.reason)];
      default: {
        const rest = Object.assign({}, e);
        for (const k of ["id", "seq", "time", "last", "event"]) delete rest[k];
        return ["", text(e.event) + " " + JSON.stringify(rest)];
      }
    }
  }

  function drawEvents() {
    const list = $("events");
    list.replaceChildren();
    const newest = Array.from(page.events.values()).sort((a, b) => b.seq - a.seq);
    for (const e of newest) {
      const [cls, words] = describe(e);
      const item = el("li", null, cls);
      item.dataset.event = String(e.event);
      const when = el("time", clock(e.time));
      let line = words;
      if (isNum(e.count)) line += " ×" + num(e.count, 0) + (e.last !== e.time ? ", last at " + clock(e.last) : "");
      item.append(when, el("span", line));
      list.append(item);
    }
    if (!newest.length) list.append(el("li", "No events yet."));
  }

  // ---- the loop -----------------------------------------------------------

  async function refresh() {
    const [status, health] = await Promise.all([get("/status"), get("/health")]);
    const history = await get("/history?since=" + page.historySeq);
    const events = await get("/events?since=" + page.eventsSeq);
    // A restarted bridge starts its counters again: start over with it.
    if (history.body.seq < page.historySeq) {
      page.history = [];
      page.historySeq = 0;
    } else {
      for (const s of history.body.samples || []) page.history.push(s);
      if (page.history.length > WINDOW_S) page.history.splice(0, page.history.length - WINDOW_S);
      page.historySeq = history.body.seq;
    }
    if (events.body.seq < page.eventsSeq) {
      page.events.clear();
      page.eventsSeq = 0;
    } else {
      for (const e of events.body.events || []) page.events.set(e.id, e);
      const keep = Array.from(page.events.values()).sort((a, b) => b.seq - a.seq).slice(0, EVENTS_SHOWN);
      page.events = new Map(keep.map((e) => [e.id, e]));
      page.eventsSeq = events.body.seq;
    }
    const st = status.body;
    page.status = st;
    page.lastAnswer = Date.now();
    const last = page.history[page.history.length - 1];
    const [cls, word, why] = verdict(st, health);
    banner(cls, word, why);
    $("updated").textContent = "updated " + clock(page.lastAnswer / 1000);
    $("version").textContent = text(st.version);
    document.title = word + " · zbridge " + text(st.node) + " (" + text(st.role) + ")";
    drawPair(st, false);
    drawTargets(st, last);
    drawStreams(st, last);
    drawCharts();
    drawEvents();
  }

  function unreachable(error) {
    const since = page.lastAnswer ? clock(page.lastAnswer / 1000) : "the page was opened";
    banner("bad", "NO ANSWER", "this bridge's monitoring port has not answered since " + since +
      " (" + text(error && error.message) + "): the process may be down; look at its peer's page");
    if (page.status) drawPair(page.status, true);
    document.title = "NO ANSWER · zbridge";
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      unreachable(error);
    }
    setTimeout(loop, EVERY_MS);
  }

  loop();
})();
