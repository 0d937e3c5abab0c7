// The live feed (/api/v1/live): authenticate with the first message, take the snapshot,
// then deltas and alert changes. When the connection drops (the API restarts, the network
// goes), say so and try again with exponential backoff and jitter; every (re)connection
// starts with a fresh snapshot, so nothing missed while away stays stale. Code 4401 means the
// token is over (expired, revoked, or signed with a secret the API no longer has): no retry,
// the page signs in again.
//
// Every message is JSON text but the snapshot: one binary message, its JSON deflated (raw
// DEFLATE) with the units as columns (docs/api.md, "Live feed"; api/live/snapshot.py).
// Inflating is asynchronous, so messages are handled in a chain, in the order they came: a
// delta never overtakes the snapshot it follows.

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const POLICY_VIOLATION = 1008;
const TOKEN_ENDED = 4401;
const SNAPSHOT_FORMAT = 2;

async function readMessage(data) {
  if (typeof data === "string") return JSON.parse(data);
  const inflated = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return JSON.parse(await new Response(inflated).text());
}

// A snapshot's columns ({count, columns: {field: values, or {values, codes}}}) as unit objects.
function snapshotUnits({ count, columns }) {
  const names = Object.keys(columns);
  const values = names.map((name) => {
    const column = columns[name];
    return Array.isArray(column) ? column : column.codes.map((code) => column.values[code]);
  });
  const units = new Array(count);
  for (let i = 0; i < count; i += 1) {
    const unit = {};
    for (let f = 0; f < names.length; f += 1) unit[names[f]] = values[f][i];
    units[i] = unit;
  }
  return units;
}

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
    ws.binaryType = "arraybuffer";
    let gotSnapshot = false;
    let handled = Promise.resolve();
    let refused = false;
    this.onStatus(this.attempt === 0 ? "connecting" : "reconnecting", null);
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.token }));
    const handle = (frame) => {
      if (this.stopped || refused) return;
      if (frame.type === "snapshot") {
        if (frame.format !== SNAPSHOT_FORMAT) { // a page older than the server: no retry
          refused = true;
          this.ws = null;
          ws.close(1000);
          this.onStatus("refused", `the server sent a snapshot of format ${frame.format}: reload the page`);
          return;
        }
        frame.units = snapshotUnits(frame.units);
        gotSnapshot = true;
        this.attempt = 0;
        this.onStatus("live", null);
      }
      this.onFrame(frame);
    };
    ws.onmessage = (event) => {
      handled = handled.then(() => readMessage(event.data)).then(handle).catch((error) => {
        console.error("live feed message not read", error);
      });
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
