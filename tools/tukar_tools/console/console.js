// The operator's web console: every cabinet on a broker, read from the MQTT contract alone
// (docs/mqtt.md), over MQTT-over-WebSockets with mqtt.js; commands signed here with WebCrypto.
"use strict";
(function () {
  const HISTORY_POINTS = 120;  // telemetry samples kept per slot for the sparklines
  const EVENTS_KEPT = 300;  // per cabinet, newest first
  const ACK_WAIT_MS = 10000;
  const ANON_ACK_MS = 5000;  // an ack without req_id (unreadable command) answers a command this recent
  const ID_RE = /^[a-z0-9-]{1,32}$/;

  // Each slot state's word and style; the word is always shown, the colour only helps.
  const SLOT_WORDS = {
    empty: "empty", awaiting_battery: "awaiting battery", identifying: "identifying",
    charging: "charging", charge_paused: "charge paused", ready: "ready", dispensing: "dispensing",
    rejected: "rejected", quarantined: "quarantined", fault: "fault",
    maintenance_open: "maintenance open",
  };
  const ERROR_WORDS = {
    bad_json: "the cabinet could not read the command (bad JSON)",
    bad_signature: "bad signature: the key is not this cabinet's key",
    stale: "stale: the command's time is too far from the cabinet's clock",
    unknown_cmd: "the cabinet does not know this command",
    bad_args: "bad arguments",
    busy: "busy: the cabinet cannot take it now",
    wrong_mode: "wrong mode: not allowed in the cabinet's current mode",
    not_in_service: "the cabinet is not in service",
    no_battery_available: "no battery available",
    no_empty_slot: "no empty slot",
    slot_range: "no such slot",
    emergency: "refused during an emergency",
    rate_limited: "too many commands: rate limited",
    not_allowed: "not allowed",
  };
  const SESSION_STEPS = ["SwapStarted", "BatteryIn", "BatteryRejected", "BatteryOut",
                         "BatteryOutTimeout", "SwapCompleted", "SwapAborted"];
  const STEP_WORDS = {
    SwapStarted: "swap started", BatteryIn: "battery in", BatteryRejected: "battery rejected",
    BatteryOut: "battery out", BatteryOutTimeout: "battery not taken", SwapCompleted: "swap completed",
    SwapAborted: "swap aborted",
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const setText = (e, t) => { if (e.textContent !== t) e.textContent = t; };

  // -- settings from the address: ?ws=<the broker's WebSocket URL>&prefix=tukar ---------------
  const query = new URLSearchParams(location.search);
  const conf = {
    ws: query.get("ws") || "ws://" + (location.hostname || "127.0.0.1") + ":9001/",
    prefix: query.get("prefix") || "tukar",
  };

  // -- the model: what the messages said ---------------------------------------------------------
  const fleet = new Map();
  function cabinet(id) {
    let c = fleet.get(id);
    if (!c) {
      c = {id, status: null, info: null, state: null, slots: new Map(), measured: new Map(),
           history: new Map(), events: [], eventIds: new Set(), session: null, lastSeen: 0,
           row: null};
      fleet.set(id, c);
      dirty.fleetRows = true;
    }
    return c;
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

  // One message; returns the cabinet it was about, or null. Topics are checked here, whatever
  // the subscription (a broker can deliver retained messages that do not match it).
  function ingest(topic, text) {
    const parts = topic.split("/");
    if (parts.length < 3 || parts[0] !== conf.prefix || !ID_RE.test(parts[1])) return null;
    const kind = parts.slice(2).join("/");
    const slotTopic = parts.length === 5 && parts[2] === "slot" && parts[4] === "state";
    if (!slotTopic && ["status", "info", "state", "event", "telemetry", "ack"].indexOf(kind) < 0) return null;
    const c = cabinet(parts[1]);
    c.lastSeen = Date.now();
    if (kind === "status") {
      c.status = text;
      return c;
    }
    let d;
    try { d = JSON.parse(text); } catch (e) { return c; }
    if (!d || typeof d !== "object" || Array.isArray(d)) return c;
    if (kind === "info") c.info = d;
    else if (kind === "state") c.state = d;
    else if (slotTopic) {
      const n = d.slot;
      if (Number.isInteger(n) && String(n) === parts[3]) {
        const before = c.slots.get(n);
        const serial = (x) => (x && x.battery ? x.battery.serial : null);
        if (before && serial(before) !== serial(d)) c.history.delete(n);  // another pack, or none
        c.slots.set(n, d);
      }
    } else if (kind === "event") addEvent(c, d);
    else if (kind === "telemetry") addTelemetry(c, d);
    else if (kind === "ack") settle(c, d);
    return c;
  }

  function addEvent(c, e) {
    if (typeof e.id !== "string" && typeof e.id !== "number") return;
    if (c.eventIds.has(e.id)) return;  // delivered at least once: the id says it is the same event
    c.eventIds.add(e.id);
    e._received = Date.now();
    c.events.unshift(e);
    if (c.events.length > EVENTS_KEPT) c.eventIds.delete(c.events.pop().id);
    if (SESSION_STEPS.indexOf(e.type) >= 0 && e.session) {
      if (e.type === "SwapStarted" || !c.session || c.session.id !== e.session) {
        c.session = {id: e.session, steps: []};
      }
      c.session.steps.push(e);
    }
  }

  function addTelemetry(c, d) {
    const slots = d.slots;
    if (!Array.isArray(slots)) return;
    const t = Date.now();
    c.measured = new Map();
    slots.forEach((n, i) => {
      const soc = Array.isArray(d.soc) ? num(d.soc[i]) : null;
      const temp = Array.isArray(d.temp_c) ? num(d.temp_c[i]) : null;
      c.measured.set(n, {soc, temp_c: temp});
      let h = c.history.get(n);
      if (!h) c.history.set(n, h = []);
      h.push({t, soc, temp});
      if (h.length > HISTORY_POINTS) h.shift();
    });
  }

  // -- rendering: at most once a frame, only what changed ----------------------------------------
  const dirty = {fleetRows: false, cabinet: false};
  let frameAsked = false;
  const perf = {renders: [], ingestMs: 0, messages: 0};  // read (and renders reset) by the benchmark
  // The fleet table is laid out again whenever a cell changes: with hundreds of cabinets that
  // costs milliseconds, so it is redrawn at most every FLEET_MS; a cabinet's view every frame.
  const FLEET_MS = 250;
  let fleetDrawn = 0;
  function schedule() {
    if (frameAsked) return;
    frameAsked = true;
    const wait = route.view === "fleet" ? fleetDrawn + FLEET_MS - performance.now() : 0;
    if (wait > 0) setTimeout(() => requestAnimationFrame(render), wait);
    else requestAnimationFrame(render);
  }
  function render() {
    frameAsked = false;
    const t0 = performance.now();
    if (route.view === "fleet") { renderFleet(); fleetDrawn = t0; }
    else if (dirty.cabinet) renderCabinet();
    dirty.cabinet = false;
    perf.renders.push(performance.now() - t0);
    if (perf.renders.length > 5000) perf.renders.splice(0, 2500);
  }

  function ageText(ms) {
    if (!ms) return "–";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h";
  }

  function fleetValues(c) {
    const s = c.state || {};
    const alarms = Array.isArray(s.alarms) ? s.alarms.join(", ") : "";
    return {
      id: c.id, status: c.status || "unknown", mode: (s.mode || "unknown").replace(/_/g, " "),
      alarms: alarms || "none", ready: num(s.ready), charging: num(s.charging),
      empty: num(s.empty), faulted: num(s.faulted), age: c.lastSeen,
    };
  }

  const sort = {key: "id", dir: 1};
  const COLUMNS = ["id", "status", "mode", "alarms", "ready", "charging", "empty", "faulted", "age"];
  const LABELS = ["Cabinet", "Status", "Mode", "Alarms", "Ready", "Charging", "Empty", "Faulted",
                  "Last message"];
  let fleetFilter = [];
  let shownOrder = "";

  function makeRow(c) {
    const tr = el("tr");
    const cells = COLUMNS.map((k, i) => {
      const td = el("td", k === "id" || k === "status" || k === "mode" || k === "alarms" ? "" : "num");
      td.dataset.label = LABELS[i];
      tr.appendChild(td);
      return td;
    });
    const a = el("a", null, c.id);
    a.href = "#/cabinet/" + encodeURIComponent(c.id);
    cells[0].appendChild(a);
    cells[1].appendChild(el("span", "badge"));
    return {tr, cells, shown: {}};
  }

  function renderFleet() {
    const tbody = $("fleet-rows");
    const rows = [];
    for (const c of fleet.values()) {
      const v = fleetValues(c);
      v.c = c;
      if (fleetFilter.length) {
        const hay = (v.id + " " + v.status + " " + v.mode + " " + v.alarms).toLowerCase();
        if (!fleetFilter.every((w) => hay.indexOf(w) >= 0)) continue;
      }
      rows.push(v);
    }
    const k = sort.key;
    rows.sort((a, b) => {
      let x = a[k], y = b[k];
      if (k === "age") { x = -x; y = -y; }  // ascending age: the most recent message first
      if (x === y) return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * sort.dir;
    });
    for (const v of rows) {
      const c = v.c;
      if (!c.row) c.row = makeRow(c);
      const r = c.row;
      const status = v.status;
      if (r.shown.status !== status) {
        const b = r.cells[1].firstChild;
        b.textContent = status;
        b.className = "badge st-" + (status === "online" ? "online" : "offline");
        r.tr.classList.toggle("is-offline", status !== "online");
        r.shown.status = status;
      }
      setText(r.cells[2], v.mode);
      setText(r.cells[3], v.alarms);
      r.cells[3].classList.toggle("alarm", v.alarms !== "none");
      setText(r.cells[4], v.ready === null ? "–" : String(v.ready));
      setText(r.cells[5], v.charging === null ? "–" : String(v.charging));
      setText(r.cells[6], v.empty === null ? "–" : String(v.empty));
      setText(r.cells[7], v.faulted === null ? "–" : String(v.faulted));
      r.cells[7].classList.toggle("alarm", !!v.faulted);
      setText(r.cells[8], ageText(v.age));
    }
    const order = rows.map((v) => v.id).join("\n");
    if (order !== shownOrder || dirty.fleetRows) {
      const frag = document.createDocumentFragment();
      for (const v of rows) frag.appendChild(v.c.row.tr);
      tbody.replaceChildren(frag);
      shownOrder = order;
      dirty.fleetRows = false;
    }
    $("fleet-empty").hidden = fleet.size > 0;
    const online = [...fleet.values()].filter((c) => c.status === "online").length;
    setText($("fleet-count"), "(" + fleet.size + " seen, " + online + " online" +
            (rows.length !== fleet.size ? ", " + rows.length + " shown" : "") + ")");
  }

  // -- the cabinet view ------------------------------------------------------------------------
  function fmt(v, unit, digits) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits === undefined ? 1 : digits) + unit;
  }

  function spark(points, key, label, unit, lo, hi) {
    const vals = points.map((p) => p[key]).filter((v) => v !== null);
    const wrap = el("figure", "spark");
    if (vals.length < 1) return wrap;
    const min = lo === undefined ? Math.min(...vals) - 1 : lo;
    const max = hi === undefined ? Math.max(...vals) + 1 : hi;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 100 24");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const first = vals[0], last = vals[vals.length - 1];
    svg.setAttribute("aria-label", label + " since the page opened: " + fmt(first, unit) + " to " +
                     fmt(last, unit) + ", " + vals.length + " samples");
    const n = points.length;
    const xy = [];
    points.forEach((p, i) => {
      if (p[key] === null) return;
      const x = n === 1 ? 100 : (i / (n - 1)) * 100;
      const y = 23 - ((p[key] - min) / (max - min || 1)) * 22;
      xy.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", xy.length === 1 ? "0," + xy[0].split(",")[1] + " " + xy[0] : xy.join(" "));
    svg.appendChild(line);
    wrap.appendChild(svg);
    wrap.appendChild(el("figcaption", null, label + " " + fmt(last, unit)));
    return wrap;
  }

  function tile(c, n, d) {
    const state = d.state || "unknown";
    const li = el("li", "tile st-" + state);
    li.dataset.slot = n;
    li.dataset.state = state;
    const h = el("h4");
    h.appendChild(el("span", "slotno", "Slot " + n));
    h.appendChild(el("span", "state", SLOT_WORDS[state] || state));
    li.appendChild(h);
    const b = Object.assign({}, d.battery || {});
    const m = c.measured.get(n);
    if (d.battery && m) {  // telemetry is fresher than the retained state
      if (m.soc !== null) b.soc = m.soc;
      if (m.temp_c !== null) b.temp_c = m.temp_c;
    }
    if (d.battery) {
      const soc = num(b.soc);
      const bar = el("div", "soc");
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-label", "state of charge");
      if (soc !== null) bar.setAttribute("aria-valuenow", String(soc));
      const fill = el("div", "fill");
      fill.style.width = Math.max(0, Math.min(100, soc || 0)) + "%";
      bar.appendChild(fill);
      bar.appendChild(el("span", "soc-text", "SoC " + fmt(soc, " %")));
      li.appendChild(bar);
    }
    const dl = el("dl");
    const row = (k, v) => { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, v)); };
    if (d.battery) {
      row("Battery", String(b.serial || "?"));
      row("Temp.", fmt(num(b.temp_c), " °C"));
    }
    const ch = d.charger || {};
    row("Charger", ch.on ? fmt(num(ch.current_a), " A") : "off");
    row("Door", (d.door || "?") + ", " + (d.lock || "?"));
    const faults = [].concat(d.faults || [], (d.battery && d.battery.faults) || []);
    if (d.reason) faults.push(String(d.reason));
    row("Faults", faults.length ? faults.join(", ") : "none");
    li.appendChild(dl);
    if (faults.length) li.classList.add("has-faults");
    const h2 = c.history.get(n);
    if (h2 && h2.length) {
      const sparks = el("div", "sparks");
      sparks.appendChild(spark(h2, "soc", "SoC", " %", 0, 100));
      sparks.appendChild(spark(h2, "temp", "Temp.", " °C"));
      li.appendChild(sparks);
    }
    return li;
  }

  function timeText(ms) {
    return new Date(ms).toLocaleTimeString([], {hour12: false});
  }

  function eventText(e) {
    const skip = {id: 1, type: 1, ts: 1, up_ms: 1, seq: 1, _received: 1};
    const parts = [];
    for (const k of Object.keys(e)) {
      if (skip[k]) continue;
      let v = e[k];
      if (v && typeof v === "object") v = v.serial || JSON.stringify(v);
      parts.push(k + "=" + v);
    }
    return parts.join(" ");
  }

  function renderCabinet() {
    const c = fleet.get(route.id);
    setText($("cab-id"), route.id);
    const sum = $("cab-summary");
    sum.replaceChildren();
    const add = (k, v, cls) => {
      sum.appendChild(el("dt", null, k));
      const dd = el("dd", cls, v);
      sum.appendChild(dd);
    };
    if (!c) {
      add("Status", "not seen on this broker");
      $("slots").replaceChildren();
      return;
    }
    const s = c.state || {};
    // open_slot is for maintenance only: offered then, its reason shown beside it otherwise.
    document.querySelector("[data-cmd=open_slot]").disabled = s.mode !== "maintenance";
    add("Status", c.status || "unknown", "badge st-" + (c.status === "online" ? "online" : "offline"));
    add("Mode", (s.mode || "unknown").replace(/_/g, " "));
    add("Alarms", Array.isArray(s.alarms) && s.alarms.length ? s.alarms.join(", ") : "none");
    add("Cabinet temp.", fmt(num(s.temp_c), " °C"));
    const sess = s.session;
    add("Session", sess ? sess.id + ": " + String(sess.phase).replace(/_/g, " ") : "none");
    add("Last message", ageText(c.lastSeen) + " ago");
    if (c.info) add("Firmware", String(c.info.fw) + " on " + String(c.info.board));

    const tiles = $("slots");
    const frag = document.createDocumentFragment();
    [...c.slots.keys()].sort((a, b) => a - b).forEach((n) => frag.appendChild(tile(c, n, c.slots.get(n))));
    tiles.replaceChildren(frag);

    const tl = $("session");
    tl.replaceChildren();
    $("session-none").hidden = !!c.session;
    if (c.session) {
      const done = c.session.steps.some((e) => e.type === "SwapCompleted" || e.type === "SwapAborted");
      tl.setAttribute("aria-label", "session " + c.session.id + (done ? "" : ", in progress"));
      c.session.steps.forEach((e) => {
        const li = el("li", "step step-" + e.type);
        li.dataset.type = e.type;
        li.appendChild(el("time", null, timeText(e._received)));
        li.appendChild(el("strong", null, " " + STEP_WORDS[e.type]));
        const what = e.slot !== undefined ? " slot " + e.slot :
          e.type === "SwapCompleted" ? " slot " + e.slot_in + " in, slot " + e.slot_out + " out, " +
            fmt(num(e.duration_ms) === null ? null : e.duration_ms / 1000, " s") : e.reason ? " (" + e.reason + ")" : "";
        li.appendChild(document.createTextNode(what));
        tl.appendChild(li);
      });
      if (!done) tl.appendChild(el("li", "step step-waiting", "… in progress"));
    }
    renderEvents(c);
  }

  let eventFilter = [];
  function renderEvents(c) {
    const ol = $("events");
    const frag = document.createDocumentFragment();
    for (const e of c.events) {
      const text = eventText(e);
      if (eventFilter.length) {
        const hay = (e.type + " " + text).toLowerCase();
        if (!eventFilter.every((w) => hay.indexOf(w) >= 0)) continue;
      }
      const li = el("li");
      li.dataset.id = e.id;
      li.dataset.type = e.type;
      li.appendChild(el("time", null, timeText(e._received)));
      li.appendChild(el("strong", null, " " + e.type + " "));
      li.appendChild(document.createTextNode(text));
      frag.appendChild(li);
    }
    ol.replaceChildren(frag);
  }

  // -- routes: #/ the fleet, #/cabinet/ID one cabinet -----------------------------------------
  const route = {view: "fleet", id: null};
  function onRoute() {
    const m = /^#\/cabinet\/([^/]+)$/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]) : null;
    route.view = id ? "cabinet" : "fleet";
    route.id = id;
    $("fleet").hidden = !!id;
    $("cabinet").hidden = !id;
    document.title = id ? id + ": tukar console" : "tukar console";
    dirty.fleetRows = true;
    dirty.cabinet = true;
    showKeyState();
    render();
    if (id) $("main").focus();  // keyboard and screen reader users land on the new view
  }

  // -- signed commands -----------------------------------------------------------------------
  function parseKeyHex(text) {
    let t = text.replace(/\s+/g, "").toLowerCase();
    if (t.startsWith("0x")) t = t.slice(2);
    if (!/^([0-9a-f]{2})+$/.test(t)) throw new Error("the key must be hex digits");
    const bytes = new Uint8Array(t.length / 2);
    for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(t.substr(i * 2, 2), 16);
    if (bytes.length < 16) throw new Error("the key must be at least 16 bytes");
    return bytes;
  }
  function importKey(bytes) {
    return crypto.subtle.importKey("raw", bytes, {name: "HMAC", hash: "SHA-256"}, false, ["sign"]);
  }
  async function signHex(key, bodyText) {
    const sig = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(bodyText));
    return Array.from(new Uint8Array(sig), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const keys = new Map();  // cabinet id -> a non-extractable CryptoKey; nothing else keeps it
  function showKeyState() {
    setText($("key-state"), route.id && keys.has(route.id) ? "A key is held for " + route.id + "." :
            "No key held.");
  }
  async function holdKey() {
    const input = $("key");
    try {
      keys.set(route.id, await importKey(parseKeyHex(input.value)));
      input.value = "";
    } catch (e) {
      setText($("key-state"), "Key not held: " + e.message + ".");
      return;
    }
    showKeyState();
  }

  const pending = new Map();  // req_id -> {cab, li, sent, timer}
  let reqCounter = 0;
  function newReqId() {
    reqCounter += 1;
    const r = new Uint8Array(4);
    crypto.getRandomValues(r);
    return "web-" + Array.from(r, (b) => b.toString(16).padStart(2, "0")).join("") + "-" + reqCounter;
  }

  function describe(cmd, args) {
    const a = Object.keys(args).map((k) => k + " " + args[k]).join(", ");
    return cmd.replace(/_/g, " ") + (a ? " (" + a + ")" : "");
  }

  async function send(cmd) {
    const id = route.id;
    if (!id) return;
    const args = {};
    if (cmd === "set_mode") args.mode = $("act-mode").value;
    if (cmd === "quarantine" || cmd === "release" || cmd === "open_slot") {
      args.slot = parseInt($("act-slot").value, 10);
    }
    if (cmd === "quarantine") args.reason = $("act-reason").value || "operator";
    const li = el("li", "ack pending");
    li.appendChild(el("strong", null, describe(cmd, args) + ": "));
    const out = el("span", "result");
    li.appendChild(out);
    $("acks").prepend(li);
    // A key typed but not yet held is taken now, then the field is cleared.
    if ($("key").value) await holdKey();
    const key = keys.get(id);
    if (!key) {
      li.className = "ack refused";
      out.textContent = "not sent: no key held for this cabinet";
      return;
    }
    const reqId = newReqId();
    const body = Object.assign({req_id: reqId, ts: Math.floor(Date.now() / 1000), cmd}, args);
    const bodyText = JSON.stringify(body);
    const envelope = JSON.stringify({body: bodyText, sig: await signHex(key, bodyText)});
    out.textContent = "sent, waiting for the ack…";
    const p = {cab: id, li, out, sent: Date.now(), cmd};
    p.timer = setTimeout(() => finish(reqId, null), ACK_WAIT_MS);
    pending.set(reqId, p);
    li.dataset.reqId = reqId;
    client.publish(conf.prefix + "/" + id + "/cmd", envelope, {qos: 1, retain: false});
  }

  function settle(c, ack) {
    let reqId = ack.req_id;
    if (reqId === null || reqId === undefined) {
      // The cabinet could not read our req_id (bad signature, bad JSON): the latest command sent
      // to this cabinet in the last seconds is the one answered.
      let best = null;
      for (const [r, p] of pending) {
        if (p.cab === c.id && Date.now() - p.sent < ANON_ACK_MS && (!best || p.sent >= best[1].sent)) best = [r, p];
      }
      if (!best) return;
      reqId = best[0];
    }
    if (pending.has(reqId)) finish(reqId, ack);
  }

  function finish(reqId, ack) {
    const p = pending.get(reqId);
    if (!p) return;
    pending.delete(reqId);
    clearTimeout(p.timer);
    if (ack === null) {
      p.li.className = "ack refused";
      p.out.textContent = "no ack within " + ACK_WAIT_MS / 1000 + " s (is the cabinet online?)";
      return;
    }
    const extra = Object.keys(ack).filter((k) => ["req_id", "ok", "error", "detail", "duplicate"].indexOf(k) < 0)
      .map((k) => k + " " + JSON.stringify(ack[k])).join(", ");
    if (ack.ok) {
      p.li.className = "ack ok";
      p.out.textContent = "ok, acknowledged" + (ack.duplicate ? " (duplicate)" : "") + (extra ? ": " + extra : "");
    } else {
      p.li.className = "ack refused";
      p.li.dataset.error = ack.error;
      p.out.textContent = "refused: " + (ERROR_WORDS[ack.error] || String(ack.error)) +
        (ack.detail ? " (" + ack.detail + ")" : "");
    }
  }

  // -- the broker ---------------------------------------------------------------------------------
  let client = null;
  function connect() {
    if (client) client.end(true);
    fleet.clear();
    dirty.fleetRows = true;
    dirty.cabinet = true;
    const status = $("conn-status");
    status.textContent = "connecting to " + conf.ws + "…";
    const options = {
      protocolVersion: 4, clean: true, keepalive: 30, reconnectPeriod: 2000, connectTimeout: 10000,
      clientId: "tukar-web-" + Math.random().toString(16).slice(2, 10),
    };
    // The broker's credentials, if any, go to the broker only, from the form at each Connect.
    const user = $("conn-user").value;
    if (user) {
      options.username = user;
      options.password = $("conn-password").value;
    }
    client = mqtt.connect(conf.ws, options);
    const p = conf.prefix;
    client.on("connect", () => {
      status.textContent = "subscribing on " + conf.ws + "…";
      client.subscribe([p + "/+/status", p + "/+/info", p + "/+/state", p + "/+/slot/+/state",
                        p + "/+/event", p + "/+/telemetry", p + "/+/ack"], {qos: 1}, (err) => {
        // Connected means subscribed: from here on nothing the fleet publishes is missed.
        status.textContent = err ? "subscription refused: " + err.message : "connected to " + conf.ws;
        status.className = err ? "st-offline" : "st-online";
      });
    });
    let refused = false;
    client.on("close", () => {
      if (refused) return;
      status.textContent = "disconnected, retrying…";
      status.className = "st-offline";
    });
    const own = client;
    client.on("error", (e) => {
      status.textContent = "broker error: " + e.message;
      status.className = "st-offline";
      // Refused credentials (CONNACK 4 or 5) will not improve by retrying: wait for the form.
      if (e.code === 4 || e.code === 5) {
        refused = true;
        own.end(true);
        status.textContent = "the broker refused: " + (e.code === 4 ? "bad user name or password" :
          "not authorised") + "; enter its user and password, then Connect";
      }
    });
    const decoder = new TextDecoder();
    client.on("message", (topic, payload) => {
      const t0 = performance.now();
      const c = ingest(topic, decoder.decode(payload));
      perf.messages += 1;
      perf.ingestMs += performance.now() - t0;
      if (!c) return;
      if (route.view === "fleet" || route.id === c.id) {
        if (route.id === c.id) dirty.cabinet = true;
        schedule();
      }
    });
  }

  // -- wiring ------------------------------------------------------------------------------------
  function words(text) { return text.toLowerCase().split(/\s+/).filter(Boolean); }

  document.querySelectorAll("#fleet-table th button").forEach((b) => {
    b.addEventListener("click", () => {
      const th = b.parentElement, key = th.dataset.key;
      sort.dir = sort.key === key ? -sort.dir : 1;
      sort.key = key;
      document.querySelectorAll("#fleet-table th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
      renderFleet();
    });
  });
  $("fleet-filter").addEventListener("input", (e) => { fleetFilter = words(e.target.value); renderFleet(); });
  $("event-filter").addEventListener("input", (e) => {
    eventFilter = words(e.target.value);
    const c = fleet.get(route.id);
    if (c) renderEvents(c);
  });
  $("key-hold").addEventListener("click", holdKey);
  $("key").addEventListener("keydown", (e) => { if (e.key === "Enter") holdKey(); });
  $("key-forget").addEventListener("click", () => { keys.delete(route.id); $("key").value = ""; showKeyState(); });
  document.querySelectorAll("[data-cmd]").forEach((b) => b.addEventListener("click", () => send(b.dataset.cmd)));
  $("conn-url").value = conf.ws;
  $("conn-prefix").value = conf.prefix;
  $("conn").addEventListener("submit", (e) => {
    e.preventDefault();
    conf.ws = $("conn-url").value.trim();
    conf.prefix = $("conn-prefix").value.trim() || "tukar";
    connect();
  });
  window.addEventListener("hashchange", onRoute);
  setInterval(() => { dirty.cabinet = true; schedule(); }, 1000);  // the ages move on

  // For the tests and the benchmark: the signature as the page computes it, and the timings.
  window.tukarConsole = {
    signHex: async (keyHex, bodyText) => signHex(await importKey(parseKeyHex(keyHex)), bodyText),
    perf, fleet,
  };
  onRoute();
  connect();
})();
