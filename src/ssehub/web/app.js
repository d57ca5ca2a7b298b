// The ssehub demo page: the chosen user's stream through the hub's browser client
// (/ssehub.js, shared by the tabs showing the same user), and buttons that call the
// hub's HTTP routes. No build step, no dependencies. Everything shown from the network
// goes through textContent, never innerHTML.
import { connect as connectStream } from "../ssehub.js";

(() => {
  const $ = (id) => document.getElementById(id);
  // Named events arrive only at listeners registered for their name (WHATWG HTML,
  // "server-sent events"); these are the ones the hub sends itself.
  const HUB_EVENTS = ["message", "keepalive", "reset", "disconnected", "expired"];

  const state = {
    source: null,        // the subscription (see /ssehub.js), if any
    user: null,          // the user it is for
    lastId: null,        // the id of the last message received, for resuming
    lastUser: null,      // whose stream lastId belongs to
    keepalives: 0,
    dropped: false,      // the connection broke and the client is reconnecting
    opened: false,       // the subscription has been open once
    closedBy: undefined, // why the hub ended it, when it did
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

  function connect(user) {
    disconnect(true);
    const resumeAfter = state.lastUser === user ? state.lastId : null;
    if (state.lastUser !== user) setLastId(null);
    state.user = user;
    state.lastUser = user;
    state.dropped = false;
    state.opened = false;
    // One stream for all of this browser's tabs that show the same user: the tab that
    // holds it relays to the others. The token is read from the field on each
    // (re)connect, so a fresh one pasted there is used after an expiry.
    const sub = connectStream(user, { token, lastEventId: resumeAfter || undefined });
    state.source = sub;
    setState("connecting", "connecting…");
    if (resumeAfter) log("info", "Reconnecting: replaying what was missed after #" + resumeAfter, { label: "resume" });

    sub.addEventListener("state", (event) => {
      if (state.source !== sub) return;
      const now = event.detail;
      if (now === "open") {
        // The hub greets every stream; the client keeps the greeting out of "message".
        log("greeting", "User '" + user + "' connected", { label: sub.leader ? "connected" : "shared" });
        if (state.dropped) log("info", "Back online; resumed after #" + (state.lastId || "none"), { label: "resume" });
        state.dropped = false;
        state.opened = true;
        setState("open", sub.leader ? "open" : "open (shared with another tab)");
      } else if (now === "reconnecting") {
        if (state.opened && !state.dropped) {
          state.dropped = true;
          log("info", "Connection lost; reconnecting and resuming after the last event id", { label: "dropped" });
        }
        setState("reconnecting", "reconnecting…");
        // A stream the hub refuses (bad user id, token, limits) is not retried here.
        explainRefusal(user).then((refused) => {
          if (refused && state.source === sub) stop("closed");
        });
      } else if (now === "closed" && state.source === sub) {
        stop("closed", state.closedBy);
      }
    });
    sub.addEventListener("message", (event) => {
      if (event.lastEventId) setLastId(event.lastEventId);
      showData("message", event);
    });
    sub.addEventListener("keepalive", (event) => {
      state.keepalives += 1;
      $("keepalives").textContent = String(state.keepalives);
      const heart = $("heart");
      heart.classList.remove("beat");
      void heart.offsetWidth; // restart the animation
      heart.classList.add("beat");
      if ($("show-keepalives").checked) log("keepalive", event.data, { label: "keep-alive" });
    });
    sub.addEventListener("reset", (event) => {
      log("reset", "History was trimmed, some messages are gone: " + event.data, { label: "reset" });
    });
    sub.addEventListener("disconnected", (event) => {
      log("disconnected", event.data, { label: "disconnected" });
      state.closedBy = "closed by the hub";
    });
    sub.addEventListener("expired", (event) => {
      log("expired", "The token expired (" + event.data + "); reconnecting with the token in the field", { label: "expired" });
    });
    for (const name of state.extraEvents) listenTo(sub, name);
  }

  function listenTo(sub, name) {
    if (HUB_EVENTS.includes(name)) return;
    sub.addEventListener(name, (event) => {
      if (event.lastEventId) setLastId(event.lastEventId);
      showData(name, event);
    });
  }

  async function explainRefusal(user) {
    try {
      const params = token() ? "?access_token=" + encodeURIComponent(token()) : "";
      const response = await fetch("sse/users/" + userPath(user) + params, { headers: authHeaders() });
      if (response.status >= 400 && response.status < 500) {
        log("error", await describeError(response));
        return true;
      }
    } catch (err) {
      log("error", "The hub is unreachable: " + err.message);
    }
    return false;
  }

  function stop(name, text) {
    const sub = state.source;
    state.source = null;
    state.dropped = false;
    state.closedBy = undefined;
    if (sub) sub.close();
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
