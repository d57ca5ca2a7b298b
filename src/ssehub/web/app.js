// The ssehub demo page: one EventSource for the chosen user, and buttons that call the
// hub's HTTP routes. No build step, no dependencies. Everything shown from the network
// goes through textContent, never innerHTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // Named events arrive only at listeners registered for their name (WHATWG HTML,
  // "server-sent events"); these are the ones the hub sends itself.
  const HUB_EVENTS = ["message", "keepalive", "reset", "disconnected", "expired"];

  const state = {
    source: null,        // the open EventSource, if any
    user: null,          // the user it is for
    lastId: null,        // the id of the last message received, for resuming
    lastUser: null,      // whose stream lastId belongs to
    keepalives: 0,
    dropped: false,      // the connection broke and EventSource is retrying
    extraEvents: new Set(),
  };

  // -- helpers -----------------------------------------------------------------

  function token() {
    return $("token").value.trim();
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    if (token()) headers.Authorization = "Bearer " + token();
    return headers;
  }

  function userPath(user) {
    return encodeURIComponent(user);
  }

  function setState(name, text) {
    const el = $("state");
    el.dataset.state = name;
    el.textContent = text || name;
    const open = state.source !== null;
    $("connect").disabled = open;
    $("disconnect").disabled = !open;
    $("user").disabled = open;
  }

  function setLastId(id) {
    state.lastId = id;
    $("last-id").textContent = id || "none";
  }

  function time() {
    return new Date().toLocaleTimeString([], { hour12: false });
  }

  // Add one line to the log. kind: greeting, message, object, keepalive, reset,
  // disconnected, expired, info, task, sent, error.
  function log(kind, text, opts) {
    const options = opts || {};
    const item = document.createElement("li");
    item.className = "entry kind-" + kind;
    item.dataset.kind = kind;
    const stamp = document.createElement("time");
    stamp.textContent = time();
    item.appendChild(stamp);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = options.label || kind;
    item.appendChild(label);
    if (options.id) {
      const id = document.createElement("code");
      id.className = "event-id";
      id.textContent = "#" + options.id;
      item.appendChild(id);
    }
    const body = document.createElement(options.pre ? "pre" : "span");
    body.className = "text";
    body.textContent = text;
    item.appendChild(body);
    const list = $("log");
    const follow = list.scrollTop + list.clientHeight >= list.scrollHeight - 20;
    list.appendChild(item);
    if (follow) list.scrollTop = list.scrollHeight;
    return item;
  }

  // A message's data: JSON objects and arrays are pretty-printed, the rest is text.
  function showData(kind, event) {
    let pretty = null;
    const data = event.data;
    if (data.startsWith("{") || data.startsWith("[")) {
      try {
        pretty = JSON.stringify(JSON.parse(data), null, 2);
      } catch (_) {
        pretty = null;
      }
    }
    const label = event.type === "message" ? kind : event.type;
    if (pretty !== null) {
      log("object", pretty, { id: event.lastEventId, pre: true, label: label === "message" ? "object" : label });
    } else {
      log(kind, data, { id: event.lastEventId, label });
    }
  }

  // -- the stream ----------------------------------------------------------------

  function streamUrl(user, resumeAfter) {
    const params = new URLSearchParams();
    // EventSource cannot set headers: a manual reconnect resumes with the query
    // parameter, a token travels as access_token.
    if (resumeAfter) params.set("last_event_id", resumeAfter);
    if (token()) params.set("access_token", token());
    const query = params.toString();
    return "sse/connect/" + userPath(user) + (query ? "?" + query : "");
  }

  function connect(user) {
    disconnect(true);
    const resumeAfter = state.lastUser === user ? state.lastId : null;
    if (state.lastUser !== user) setLastId(null);
    state.user = user;
    state.lastUser = user;
    state.dropped = false;
    const source = new EventSource(streamUrl(user, resumeAfter));
    state.source = source;
    setState("connecting", "connecting…");
    if (resumeAfter) log("info", "Reconnecting: replaying what was missed after #" + resumeAfter, { label: "resume" });

    let expectGreeting = true;
    source.onopen = () => {
      expectGreeting = true;
      if (state.dropped) {
        log("info", "Back online; EventSource resumed after #" + (state.lastId || "none"), { label: "resume" });
        state.dropped = false;
      }
      setState("open");
    };
    source.onerror = () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // The hub refused the stream (bad user id, token, limits): say why.
        log("error", "The stream was refused or closed; checking why…");
        explainRefusal(user);
        stop("closed");
      } else if (!state.dropped) {
        state.dropped = true;
        setState("reconnecting", "reconnecting…");
        log("info", "Connection lost; the browser reconnects by itself with Last-Event-ID", { label: "dropped" });
      }
    };
    source.addEventListener("message", (event) => {
      // The first event of every connection is the greeting. It has no id (an event
      // without an id keeps the previous lastEventId), so it is told apart by position.
      if (expectGreeting) {
        expectGreeting = false;
        log("greeting", event.data, { label: "connected" });
        return;
      }
      if (event.lastEventId) setLastId(event.lastEventId);
      showData("message", event);
    });
    source.addEventListener("keepalive", (event) => {
      state.keepalives += 1;
      $("keepalives").textContent = String(state.keepalives);
      const heart = $("heart");
      heart.classList.remove("beat");
      void heart.offsetWidth; // restart the animation
      heart.classList.add("beat");
      if ($("show-keepalives").checked) log("keepalive", event.data, { label: "keep-alive" });
    });
    source.addEventListener("reset", (event) => {
      log("reset", "History was trimmed, some messages are gone: " + event.data, { label: "reset" });
    });
    source.addEventListener("disconnected", (event) => {
      log("disconnected", event.data, { label: "disconnected" });
      stop("closed", "closed by the hub");
    });
    source.addEventListener("expired", (event) => {
      log("expired", "The token expired (" + event.data + "); paste a new one and connect", { label: "expired" });
      stop("closed", "token expired");
    });
    for (const name of state.extraEvents) listenTo(source, name);
  }

  function listenTo(source, name) {
    if (HUB_EVENTS.includes(name)) return;
    source.addEventListener(name, (event) => {
      if (event.lastEventId) setLastId(event.lastEventId);
      showData(name, event);
    });
  }

  async function explainRefusal(user) {
    try {
      const params = token() ? "?access_token=" + encodeURIComponent(token()) : "";
      const response = await fetch("sse/users/" + userPath(user) + params, { headers: authHeaders() });
      if (!response.ok) log("error", await describeError(response));
    } catch (err) {
      log("error", "The hub is unreachable: " + err.message);
    }
  }

  function stop(name, text) {
    if (state.source) state.source.close();
    state.source = null;
    state.dropped = false;
    setState(name, text);
  }

  function disconnect(quiet) {
    if (!state.source) return;
    stop("closed");
    if (!quiet) log("info", "Disconnected. Messages sent now wait for the next connect.", { label: "closed" });
  }

  // -- HTTP calls -------------------------------------------------------------------

  async function describeError(response) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    return response.status + " " + detail;
  }

  async function call(method, path, body) {
    const init = { method, headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      log("error", method + " " + path + ": the hub is unreachable (" + err.message + ")");
      return null;
    }
    if (!response.ok) {
      log("error", method + " " + path + ": " + (await describeError(response)));
      return null;
    }
    const text = await response.text();
    return text ? JSON.parse(text) : {};
  }

  function currentUser() {
    const user = state.user || $("user").value.trim();
    if (!user) log("error", "Enter a user id first");
    return user;
  }

  async function runDemo(path, what) {
    const user = currentUser();
    if (!user) return;
    log("info", what + " started for '" + user + "'", { label: "task" });
    const result = await call("GET", path + userPath(user));
    if (result) log("task", result.message + ": " + result.data, { label: "done" });
  }

  function messageBody() {
    const raw = $("send-data").value;
    let data = raw;
    if ($("send-json").checked) {
      try {
        data = JSON.parse(raw);
      } catch (err) {
        log("error", "The data is not valid JSON: " + err.message);
        return null;
      }
    }
    const body = { data };
    const event = $("send-event").value.trim();
    if (event) {
      body.event = event;
      if (!state.extraEvents.has(event)) {
        state.extraEvents.add(event);
        if (state.source) listenTo(state.source, event);
      }
    }
    return body;
  }

  async function send(event) {
    event.preventDefault();
    const to = $("send-user").value.trim() || currentUser();
    if (!to) return;
    const body = messageBody();
    if (!body) return;
    const result = await call("POST", "sse/users/" + userPath(to) + "/messages", body);
    if (result) log("sent", "to '" + to + "' (" + result.status + "), id " + result.id, { label: "sent" });
  }

  async function broadcast() {
    const body = messageBody();
    if (!body) return;
    const result = await call("POST", "sse/broadcast", body);
    if (result) log("sent", "broadcast to every connected user", { label: "sent" });
  }

  // -- wiring ----------------------------------------------------------------------

  $("connect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user").value.trim();
    if (user) connect(user);
  });
  $("disconnect").addEventListener("click", () => disconnect(false));
  $("run-task").addEventListener("click", () => runDemo("sse/task/", "Long task"));
  $("run-countdown").addEventListener("click", () => runDemo("sse/task-with-obj/", "Object countdown"));
  $("server-disconnect").addEventListener("click", async () => {
    const user = currentUser();
    if (user) await call("GET", "sse/disconnect/" + userPath(user));
  });
  $("send-form").addEventListener("submit", send);
  $("broadcast").addEventListener("click", broadcast);
  $("clear").addEventListener("click", () => { $("log").textContent = ""; });
  window.addEventListener("beforeunload", () => disconnect(true));

  const fromQuery = new URLSearchParams(location.search).get("user");
  if (fromQuery) $("user").value = fromQuery;
  setState("closed");
  document.body.dataset.ready = "true";
})();
