// The unit panel: one unit's battery, charging, storage, GPS accuracy and last report (kept
// current by the live feed), its recording history (the events endpoint), and its track
// over the last hours drawn on the map and played back with a time slider.
// Its state agrees with the unit's marker: an unresolved emergency alert (the map's SOS)
// shows as EMERGENCY above the camera's recording state, and while the live feed is down the
// state is greyed with the age of the last update, as the markers are.

import { clear, fmtAgo, fmtPct, fmtTime, h, show } from "./dom.js";
import { isLowBattery, mercator } from "./store.js";

const EVENT_NAMES = {
  recording_started: "Recording started", recording_stopped: "Recording stopped", emergency: "Emergency",
  emergency_cleared: "Emergency cleared", watch_me: "Watch me", docked: "Docked", undocked: "Undocked",
};

export class UnitPanel {
  constructor({ root, store, api, map, actions }) {
    this.root = root;
    this.store = store;
    this.api = api;
    this.map = map;
    this.actions = actions; // [{label, when(unit) -> bool, run(unit)}]
    this.deviceId = null;
    this.detail = null;
    this.playTimer = null;
    this.staleSince = null; // the last update's time while the live feed is down (main.js)
    this.fields = root.querySelector(".unit-fields");
    this.title = root.querySelector(".unit-title");
    this.events = root.querySelector(".unit-events");
    this.buttons = root.querySelector(".unit-actions");
    this.slider = root.querySelector("input[name=track-time]");
    this.hours = root.querySelector("select[name=track-hours]");
    this.trackInfo = root.querySelector(".track-info");
    this.playButton = root.querySelector("button.play");
    root.querySelector("button.close").addEventListener("click", () => this.close());
    this.hours.addEventListener("change", () => this.loadTrack());
    this.slider.addEventListener("input", () => this.seek(Number(this.slider.value)));
    this.playButton.addEventListener("click", () => this.togglePlay());
    store.subscribe((kind, changed) => {
      if (!this.deviceId) return;
      if (kind === "snapshot" || kind === "alerts" || changed.some((u) => u.device_id === this.deviceId)) this.drawFields();
    });
  }

  async open(deviceId) {
    this.stopPlay();
    this.deviceId = deviceId;
    this.map.setSelected(deviceId);
    show(this.root, true);
    this.root.dataset.deviceId = deviceId;
    this.detail = null;
    this.drawFields();
    clear(this.events).append(h("li", { class: "muted" }, "Loading…"));
    const [detail] = await Promise.allSettled([
      this.api.get(`/api/v1/devices/${encodeURIComponent(deviceId)}`),
      this.loadEvents(),
      this.loadTrack(),
    ]);
    if (this.deviceId !== deviceId) return;
    if (detail.status === "fulfilled") this.detail = detail.value;
    this.drawFields();
  }

  close() {
    this.stopPlay();
    this.deviceId = null;
    this.map.setSelected(null);
    this.map.track = null;
    this.map.invalidate();
    show(this.root, false);
  }

  setStale(since) {
    const note = this.fields.querySelector(".feed-stale");
    if (since !== null && note !== null && this.staleSince === since) {
      // Only the age moves: the buttons are not rebuilt under the operator's pointer every second.
      note.textContent = this.staleText();
      return;
    }
    this.staleSince = since;
    this.drawFields();
  }

  staleText() {
    return `disconnected: last update ${fmtAgo(this.staleSince)}`;
  }

  // The unit's unresolved emergency alert, the one that draws its marker as SOS (map.js).
  emergency() {
    if (!this.store.emergencies.has(this.deviceId)) return null;
    for (const a of this.store.alerts.values()) {
      if (a.kind === "emergency" && a.device_id === this.deviceId) return a;
    }
    return null;
  }

  stateRow(u) {
    const sos = this.emergency();
    const camera = u.state || "—";
    if (sos) {
      const handled = sos.status === "acknowledged" ? `, acknowledged by ${sos.acknowledged_by}` : ", not acknowledged";
      return [`EMERGENCY (SOS)${handled} · camera ${camera}`, "state state-emergency"];
    }
    return [camera, `state state-${this.staleSince === null ? u.state : "stale"}`];
  }

  unit() {
    return { ...(this.detail || {}), ...(this.store.units.get(this.deviceId) || {}) };
  }

  drawFields() {
    if (!this.deviceId) return;
    const u = this.unit();
    this.title.textContent = `${u.callsign || u.device_id}`;
    const row = (label, value, cls = "") => [h("dt", {}, label), h("dd", { class: cls }, value)];
    const [state, stateClass] = this.stateRow(u);
    this.root.classList.toggle("emergency", stateClass.includes("state-emergency"));
    this.root.classList.toggle("stale", this.staleSince !== null);
    clear(this.fields).append(
      ...(this.staleSince === null ? [] : row("Live feed", this.staleText(), "warn feed-stale")),
      ...row("Device", u.device_id),
      ...row("Officer", u.officer || "—"),
      ...row("Borough", u.borough || "—"),
      ...row("Role", u.role || "—"),
      ...row("State", state, stateClass),
      ...row("Battery", `${fmtPct(u.battery_pct)}${u.charging ? " (charging)" : ""}`, isLowBattery(u) ? "warn" : ""),
      ...row("Charging", u.charging ? "yes" : "no"),
      ...row("Docked", u.docked ? "yes" : "no"),
      ...row("Storage", fmtPct(u.storage_pct), u.storage_pct >= 90 ? "warn" : ""),
      ...row("GPS", u.gps_fix ? `fix, ±${u.accuracy_m === null || u.accuracy_m === undefined ? "?" : Math.round(u.accuracy_m)} m`
        : "no fix", u.gps_fix ? "" : "warn"),
      ...row("Last fix", u.last_fix_at ? `${fmtTime(u.last_fix_at)} (${fmtAgo(u.last_fix_at)})` : "—"),
      ...row("Last seen", u.received_at ? `${fmtTime(u.received_at)} (${fmtAgo(u.received_at)})` : "never"),
      ...row("Live video", u.live ? `streaming, ${u.viewers || 0} watching` : "no"),
      ...(u.firmware ? row("Firmware", u.firmware) : []),
    );
    clear(this.buttons);
    for (const action of this.actions) {
      if (action.when(u)) this.buttons.append(h("button", { type: "button", onclick: () => action.run(u) }, action.label));
    }
  }

  async loadEvents() {
    const id = this.deviceId;
    try {
      const events = await this.api.get(`/api/v1/devices/${encodeURIComponent(id)}/events`, { limit: 50 });
      if (id !== this.deviceId) return;
      clear(this.events);
      if (!events.length) this.events.append(h("li", { class: "muted" }, "No events in the last 12 hours."));
      for (const e of events) {
        this.events.append(h("li", { class: `event ev-${e.type}` }, h("time", {}, fmtTime(e.ts)), " ",
          EVENT_NAMES[e.type] || e.type.replaceAll("_", " "),
          e.details && e.details.trigger ? ` (${e.details.trigger})` : ""));
      }
    } catch (error) {
      if (id === this.deviceId) clear(this.events).append(h("li", { class: "error" }, error.message));
    }
  }

  async loadTrack() {
    const id = this.deviceId;
    this.stopPlay();
    const hours = Number(this.hours.value);
    const end = new Date();
    const start = new Date(end.getTime() - hours * 3600 * 1000);
    try {
      const points = await this.api.get(`/api/v1/devices/${encodeURIComponent(id)}/track`, {
        start: start.toISOString(), end: end.toISOString(), max_points: 1000,
      });
      if (id !== this.deviceId) return;
      this.points = points.map((p) => {
        const [mx, my] = mercator(p.lat, p.lon);
        return { ...p, mx, my };
      });
      this.map.track = { points: this.points, at: null };
      this.slider.max = String(Math.max(0, this.points.length - 1));
      this.slider.value = this.slider.max;
      this.slider.disabled = this.points.length < 2;
      this.playButton.disabled = this.points.length < 2;
      this.trackInfo.textContent = this.points.length
        ? `${this.points.length} fix${this.points.length === 1 ? "" : "es"} from ${fmtTime(this.points[0].ts)} to ${fmtTime(this.points.at(-1).ts)}`
        : `No fixes in the last ${hours} h.`;
      this.map.invalidate();
    } catch (error) {
      if (id === this.deviceId) this.trackInfo.textContent = error.message;
    }
  }

  seek(index) {
    if (!this.points || !this.points.length) return;
    const i = Math.max(0, Math.min(this.points.length - 1, index));
    this.map.track = { points: this.points, at: i };
    const p = this.points[i];
    this.trackInfo.textContent = `${fmtTime(p.ts)} · ${p.recording || "?"}` +
      (p.speed_mps !== null && p.speed_mps !== undefined ? ` · ${(p.speed_mps * 3.6).toFixed(0)} km/h` : "");
    this.map.invalidate();
  }

  togglePlay() {
    if (this.playTimer) return this.stopPlay();
    let i = Number(this.slider.value);
    if (i >= this.points.length - 1) i = 0;
    this.playButton.textContent = "Pause";
    // About 10 seconds for the whole track, however long it is.
    const step = Math.max(1, Math.round(this.points.length / 200));
    this.playTimer = setInterval(() => {
      i = Math.min(this.points.length - 1, i + step);
      this.slider.value = String(i);
      this.seek(i);
      if (i >= this.points.length - 1) this.stopPlay();
    }, 50);
  }

  stopPlay() {
    clearInterval(this.playTimer);
    this.playTimer = null;
    this.playButton.textContent = "Play";
  }
}
