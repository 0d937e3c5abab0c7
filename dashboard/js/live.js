// The live feed (/api/v1/live): authenticate with the first message, take the snapshot,
// then deltas and alert changes. When the connection drops (the API restarts, the network
// goes), say so and try again with exponential backoff and jitter; every (re)connection
// starts with a fresh snapshot, so nothing missed while away stays stale. Code 4401 means the
// token is over (expired, revoked, or signed with a secret the API no longer has): no retry,
// the page signs in again.

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const POLICY_VIOLATION = 1008;
const TOKEN_ENDED = 4401;

export class LiveFeed {
  constructor({ token, onFrame, onStatus }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onStatus = onStatus; // ("connecting" | "live" | "disconnected" | "refused" | "ended", detail)
    this.attempt = 0;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/live`);
    this.ws = ws;
    let gotSnapshot = false;
    this.onStatus(this.attempt === 0 ? "connecting" : "reconnecting", null);
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.token }));
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "snapshot") {
        gotSnapshot = true;
        this.attempt = 0;
        this.onStatus("live", null);
      }
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      if (event.code === TOKEN_ENDED) {
        this.onStatus("ended", event.reason || "token expired");
        return;
      }
      if (event.code === POLICY_VIOLATION) {
        this.onStatus("refused", event.reason || "the live feed refused this session");
        return;
      }
      if (!gotSnapshot) this.attempt += 1;
      else this.attempt = 1;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.attempt - 1)) * (0.75 + Math.random() * 0.5);
      this.onStatus("disconnected", Math.round(delay));
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }
}
