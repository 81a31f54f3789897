// Live trace: follow the request's WebSocket stream and, after each frame, swap in the
// server-rendered trace body (one renderer for static and live pages, autoescaped).
(function () {
  "use strict";
  var body = document.getElementById("trace-body");
  var state = document.getElementById("live-state");
  if (!body || body.dataset.live !== "1") return;
  var after = body.dataset.after || "0";
  var finished = false;
  var timer = null;

  function show(text, on) {
    if (!state) return;
    state.textContent = text;
    state.className = "live-indicator " + (on ? "on" : "off");
  }

  function refresh() {
    timer = null;
    // Keep what the reader opened or closed: the new HTML would reset it.
    var open = {};
    body.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    fetch(window.location.pathname + "?fragment=1", { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        body.innerHTML = html;
        body.querySelectorAll("details[id]").forEach(function (d) {
          if (d.id in open) d.open = open[d.id];
        });
      })
      .catch(function () { show("refresh failed; reload the page", false); });
  }

  // The running step's text as the model writes it (textContent: model output is untrusted).
  var tokens = document.getElementById("live-tokens");
  var tokenStep = null;
  function addTokens(delta) {
    if (!tokens) return;
    var step = delta.step_key + "#" + delta.attempt;
    if (step !== tokenStep) { tokenStep = step; tokens.textContent = ""; }  // a retried attempt starts afresh
    tokens.textContent += delta.text || "";
    tokens.hidden = false;
  }
  function clearTokens() {
    if (!tokens || tokens.hidden) return;
    tokens.hidden = true;
    tokens.textContent = "";
    tokenStep = null;
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss" : "ws";
    var url = scheme + "://" + window.location.host + "/ws/v1/agent/" + encodeURIComponent(body.dataset.agent) +
      "/request/" + encodeURIComponent(body.dataset.request) + "/?stream=tokens&after=" + encodeURIComponent(after);
    var ws = new WebSocket(url);
    ws.onopen = function () { show("live", true); };
    ws.onmessage = function (message) {
      var frame = JSON.parse(message.data);
      if (frame.event === "agent.delta") { addTokens(frame.data || {}); return; }
      clearTokens();  // a stored frame: the refreshed body shows the step in place of its tokens
      if (typeof frame.id === "number") after = String(frame.id);
      if (frame.event === "request.completed" || frame.event === "request.error") finished = true;
      if (!timer) timer = setTimeout(refresh, 250);
    };
    ws.onclose = function () {
      if (finished) { show("finished", false); return; }
      show("reconnecting…", false);
      setTimeout(connect, 2000);
    };
  }
  connect();
})();
