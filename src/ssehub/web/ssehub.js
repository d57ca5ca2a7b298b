// ssehub.js: a user's ssehub stream in the browser, shared by all tabs.
//
//   import { connect } from "/ssehub.js";
//   const sub = connect("alice", { token: () => fetchToken() });
//   sub.addEventListener("message", (e) => show(e.data, e.lastEventId));
//
// One dependency-free ES module, no build step. With shareTabs (the default) the tabs of
// one browser profile that connect the same user to the same hub elect a leader with a
// Web Lock; the leader holds the only EventSource and relays each event to the other tabs
// on a BroadcastChannel. Each tab keeps the newest event id it has seen and drops any
// event that is not newer, so the replay after a takeover repeats nothing. Without Web
// Locks or BroadcastChannel every tab holds its own stream.

// Always listened to; named events are added as pages ask for them.
const HUB_EVENTS = ["message", "reset", "disconnected", "expired"];
// Not names a page may ask the leader to listen to: this client's own, EventSource's.
const RESERVED = ["state", "open", "error", ...HUB_EVENTS];
// Events without an id of their own: never deduplicated.
const NO_ID = new Set(["reset", "disconnected", "expired", "keepalive"]);
const ASK_MS = 150; // a new leader waits this long for the other tabs' newest ids
const MIN_DELAY = 1000; // own reconnect back-off, once EventSource has given up
const MAX_DELAY = 30000;

// Order key of an event id: the hub's ids are "N" or "N-M", compared as (N, M) even
// beyond 2**53; any other id compares as text.
function key(id) {
  const m = /^(\d{1,20})(?:-(\d{1,20}))?$/.exec(id);
  return m ? m[1].padStart(20, "0") + (m[2] || "").padStart(20, "0") : id;
}

const newer = (id, than) => !!id && (!than || key(id) > key(than));

/** Subscribe to a user's stream; see the README, "In the browser". */
export function connect(userId, options = {}) {
  return new Subscription(userId, options);
}

class Subscription extends EventTarget {
  constructor(userId, { url, token, shareTabs = true, lastEventId } = {}) {
    super();
    this.leader = false;
    this.state = "";
    this._user = String(userId);
    // The hub's base URL: by default where this module was served from.
    this._base = url
      ? new URL(url.replace(/\/?$/, "/"), location.href).href
      : new URL("./", import.meta.url).href;
    this._token = token;
    this._last = lastEventId || ""; // the newest id this tab dispatched
    this._seen = ""; // the newest id other tabs reported, where a new stream resumes
    this._names = new Set(); // named events any tab asked for
    this._delay = 0;
    queueMicrotask(() => this._set("connecting"));
    const g = globalThis;
    if (!shareTabs || !g.navigator?.locks || !g.BroadcastChannel) {
      queueMicrotask(() => this._lead());
      return;
    }
    const name = `ssehub ${this._base} ${this._user}`;
    this._channel = new BroadcastChannel(name);
    this._channel.onmessage = (e) => this._heard(e.data);
    this._abort = new AbortController();
    navigator.locks
      .request(name, { signal: this._abort.signal }, () =>
        this._closed ? null : new Promise((release) => {
          this._release = release;
          this._lead();
        }))
      .catch(() => {
        // Aborted by close(), or refused (an opaque origin): then hold a stream alone.
        if (this._closed) return;
        this._channel.close();
        this._channel = null;
        this._lead();
      });
    this._post({ t: "names", names: [], hello: true });
  }

  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (this._want(type)) this._post({ t: "names", names: [type] });
  }

  /** Leave: this tab gets no more events; another tab takes the stream over. */
  close() {
    this._end();
  }

  // -- the leader's stream --------------------------------------------------------------

  async _lead() {
    this.leader = true;
    if (this._channel) {
      // Ask the others for the newest id they saw: the stream resumes after it.
      this._post({ t: "who" });
      await new Promise((done) => setTimeout(done, ASK_MS));
    }
    this._open();
  }

  async _open() {
    if (this._closed) return;
    this._set(this.state === "connecting" ? "connecting" : "reconnecting");
    let token = this._token;
    try {
      if (typeof token === "function") token = await token();
    } catch {
      return this._retry();
    }
    if (this._closed) return;
    const query = new URLSearchParams();
    const resume = newer(this._seen, this._last) ? this._seen : this._last;
    if (resume) query.set("last_event_id", resume);
    if (token) query.set("access_token", token);
    const qs = String(query);
    const src = new EventSource(
      `${this._base}sse/connect/${encodeURIComponent(this._user)}${qs ? "?" + qs : ""}`,
    );
    this._source = src;
    src.onopen = () => {
      this._greeting = true; // each connection starts with one
      this._delay = 0;
      this._set("open");
    };
    src.onerror = () => {
      if (src !== this._source) return;
      // CLOSED: EventSource gave up (an answer other than a 200 stream). Otherwise it
      // reconnects by itself, after the hub's retry: and with Last-Event-ID.
      if (src.readyState === EventSource.CLOSED) this._retry();
      else this._set("reconnecting");
    };
    for (const type of [...HUB_EVENTS, ...this._names]) this._listen(src, type);
  }

  _listen(src, type) {
    src.addEventListener(type, (e) => {
      if (src !== this._source) return;
      if (type === "message" && this._greeting) {
        this._greeting = false;
        if (e.data === `User '${this._user}' connected`) return;
      }
      this._got(type, e.data, NO_ID.has(type) ? "" : e.lastEventId, true);
    });
  }

  _stop() {
    clearTimeout(this._timer);
    this._source?.close();
    this._source = null;
  }

  _retry() {
    this._stop();
    this._set("reconnecting");
    this._delay = Math.min(MAX_DELAY, this._delay * 2 || MIN_DELAY);
    // Jitter, so that the leaders of many browsers do not come back in step.
    this._timer = setTimeout(() => this._open(), this._delay * (0.5 + Math.random() / 2));
  }

  // -- every tab --------------------------------------------------------------------------

  // One event, from this tab's stream (relay) or from the leader's.
  _got(type, data, id, relay) {
    if (this._closed) return;
    if (id) {
      if (!newer(id, this._last)) return;
      this._last = id;
    }
    if (relay) this._post({ t: "ev", type, data, id });
    this.dispatchEvent(new MessageEvent(type, { data, lastEventId: this._last }));
    // After a reset the hub could not resume after our id: take what follows as new.
    if (type === "reset") this._last = this._seen = "";
    if (type === "disconnected") this._end();
    else if (type === "expired" && relay) {
      this._stop(); // the hub closes it: come back at once with a fresh token
      this._open();
    }
  }

  _heard(m) {
    if (this._closed) return;
    if (m.t === "ev") this._got(m.type, m.data, m.id, false);
    else if (m.t === "state" && !this.leader) this._set(m.s);
    else if (m.t === "who") this._post({ t: "seen", id: this._last, names: [...this._names] });
    if (m.names) for (const type of m.names) this._want(type);
    if (m.t === "seen" && newer(m.id, this._seen)) this._seen = m.id;
    if (m.hello && this.leader) this._post({ t: "state", s: this.state });
  }

  // Listen to a named event: true if it is new to this tab.
  _want(type) {
    if (!this._names || RESERVED.includes(type) || this._names.has(type)) return false;
    this._names.add(type);
    if (this._source) this._listen(this._source, type);
    return true;
  }

  _set(state) {
    if (this.leader) this._post({ t: "state", s: state });
    if (state === this.state || this._closed) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  _post(message) {
    if (!this._closed) this._channel?.postMessage(message);
  }

  _end() {
    if (this._closed) return;
    this.leader = false;
    this._set("closed");
    this._closed = true;
    this._stop();
    this._abort?.abort();
    this._release?.();
    this._channel?.close();
  }
}
