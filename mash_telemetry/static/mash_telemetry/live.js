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

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // One clock for every row: the browser's, 24 h (server-rendered rows carry data-ts).
  function clock(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
  }
  table.querySelectorAll("td[data-ts]").forEach(function (td) {
    td.textContent = clock(parseFloat(td.dataset.ts));
  });

  function addRow(e) {
    var tr = document.createElement("tr");
    tr.className = "new";
    cell(tr, clock(e.created_at || 0), "nowrap");
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
