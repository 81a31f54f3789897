// Live tail: every new event of the host (or one agent) from the staff telemetry WebSocket.
// Rows are built with textContent only: payloads come from models, tools and clients.
(function () {
  "use strict";
  var table = document.getElementById("tail-body");
  var state = document.getElementById("live-state");
  var counter = document.getElementById("tail-count");
  var pause = document.getElementById("tail-pause");
  if (!table) return;
  var agent = table.dataset.agent || "";
  var requestUrl = table.dataset.requestUrl; // a URL with a placeholder id to replace
  var received = 0;
  var paused = false;
  var MAX_ROWS = 500;

  // One clock for every page: the server's time zone (data-zone, an IANA name) and its
  // labels by UTC offset (data-zone-labels), never the browser's. Same text as
  // mash_runtime/presentation/clock.py renders: "Dec 02 08:04:49 UTC", full timestamp on hover.
  var zone = table.dataset.zone || "UTC";
  var labels = {};
  try { labels = JSON.parse(table.dataset.zoneLabels || "{}"); } catch (e) { labels = {}; }
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  var parts;
  try {
    parts = new Intl.DateTimeFormat("en-US", {
      timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
      second: "2-digit", hourCycle: "h23", timeZoneName: "longOffset"
    });
  } catch (e) {
    zone = "UTC";
    parts = new Intl.DateTimeFormat("en-US", {
      timeZone: "UTC", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
      second: "2-digit", hourCycle: "h23", timeZoneName: "longOffset"
    });
  }

  function serverTime(seconds) {
    // Whole microseconds first, then milliseconds cut, as Python's datetime does.
    var micros = Math.round(seconds * 1e6);
    var date = new Date(Math.floor(micros / 1000));
    var p = {};
    parts.formatToParts(date).forEach(function (part) { p[part.type] = part.value; });
    var offset = (p.timeZoneName || "GMT").replace("GMT", "") || "+00:00";
    offset = offset.replace("\u2212", "-");
    var label = labels[offset] || ("UTC" + offset);
    var hour = p.hour === "24" ? "00" : p.hour;
    var clockText = hour + ":" + p.minute + ":" + p.second;
    var millis = String(Math.floor(micros / 1000) % 1000).padStart(3, "0");
    return {
      text: MONTHS[parseInt(p.month, 10) - 1] + " " + p.day + " " + clockText,
      label: label,
      full: p.year + "-" + p.month + "-" + p.day + " " + clockText + "." + millis + " " + label + " (UTC" + offset + ")",
      iso: p.year + "-" + p.month + "-" + p.day + "T" + clockText + "." + millis + offset
    };
  }

  function relative(seconds) {
    var delta = Date.now() / 1000 - seconds;
    var future = delta < 0;
    delta = Math.abs(delta);
    if (delta < 5) return "just now";
    var text;
    if (delta < 60) text = Math.floor(delta) + " s";
    else if (delta < 3600) text = Math.floor(delta / 60) + " min";
    else if (delta < 86400) text = Math.floor(delta / 3600) + " h";
    else text = Math.floor(delta / 86400) + " d";
    return future ? "in " + text : text + " ago";
  }

  function timeCell(tr, seconds) {
    var td = document.createElement("td");
    td.className = "nowrap";
    var t = serverTime(seconds);
    var rel = relative(seconds);
    var time = document.createElement("time");
    time.className = "when";
    time.dateTime = t.iso;
    time.title = t.full + " \u00b7 " + rel;
    time.appendChild(document.createTextNode(t.text + " "));
    var tz = document.createElement("span");
    tz.className = "tz";
    tz.textContent = t.label;
    time.appendChild(tz);
    td.appendChild(time);
    td.appendChild(document.createTextNode(" "));
    var ago = document.createElement("span");
    ago.className = "ago";
    ago.textContent = rel;
    td.appendChild(ago);
    tr.appendChild(td);
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function addRow(e) {
    var tr = document.createElement("tr");
    tr.className = "new";
    tr.dataset.event = String(e.request_id || "") + "#" + e.request_seq;
    timeCell(tr, e.created_at || 0);
    cell(tr, e.agent_id || "");
    var type = String(e.event_type || "");
    cell(tr, type, "mono ev-" + type.split(".")[0]);
    var td = cell(tr, "", "mono");
    var a = document.createElement("a");
    a.href = requestUrl.replace("00000000-0000-0000-0000-000000000000", encodeURIComponent(e.request_id));
    a.textContent = String(e.request_id || "").slice(0, 8) + " #" + e.request_seq;
    td.appendChild(a);
    cell(tr, JSON.stringify(e.payload || {}).slice(0, 200), "mono small muted");
    table.insertBefore(tr, table.firstChild);
    while (table.children.length > MAX_ROWS) table.removeChild(table.lastChild);
  }

  function show(text, on) {
    state.textContent = text;
    state.className = "live-indicator " + (on ? "on" : "off");
  }

  if (pause) pause.addEventListener("click", function () {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
  });

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss" : "ws";
    var url = scheme + "://" + window.location.host + "/ws/v1/telemetry/" +
      (agent ? "?agent_id=" + encodeURIComponent(agent) : "");
    var ws = new WebSocket(url);
    ws.onopen = function () { show("live", true); };
    ws.onmessage = function (message) {
      received += 1;
      if (counter) counter.textContent = String(received);
      if (!paused) addRow(JSON.parse(message.data));
    };
    // The tail starts at "now" on every connection: events during a reconnect are in the request pages.
    ws.onclose = function () { show("reconnecting…", false); setTimeout(connect, 2000); };
  }
  connect();
})();
