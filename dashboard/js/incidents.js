// The firearms commander's view of an incident: its area on the map, each assigned unit's
// position, battery and recording state, and a mark that cannot be missed on any assigned
// firearms unit that is not recording. Refreshed from the API every few seconds and from
// the live feed in between.

import { clear, fmtAgo, fmtPct, h, show, throttle } from "./dom.js";
import { isLowBattery } from "./store.js";

const REFRESH_MS = 5000;

export class IncidentPanel {
  constructor({ root, api, store, map, onLocate, onLiveView = null }) {
    this.root = root;
    this.onLiveView = onLiveView; // (unit, incidentId): a live-view request made for this incident
    this.api = api;
    this.store = store;
    this.map = map;
    this.onLocate = onLocate;
    this.select = root.querySelector("select[name=incident]");
    this.table = root.querySelector("tbody");
    this.summary = root.querySelector(".incident-summary");
    this.form = root.querySelector("form.new-incident");
    this.incidents = [];
    this.current = null;
    this.draw = throttle(() => this.drawUnits(), 500);
    this.select.addEventListener("change", () => this.choose(Number(this.select.value) || null));
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.create();
    });
    store.subscribe((kind, changed) => {
      if (this.current && (kind === "snapshot" || changed.some((u) => this.assigned(u.device_id)))) this.draw();
    });
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  assigned(deviceId) {
    return this.current !== null && this.current.units.some((u) => u.device_id === deviceId);
  }

  async load() {
    try {
      this.incidents = await this.api.get("/api/v1/incidents");
    } catch (error) {
      this.summary.textContent = error.message;
      return;
    }
    const keep = this.current ? this.current.id : null;
    clear(this.select).append(h("option", { value: "" }, this.incidents.length ? "Choose an incident…" : "No open incidents"),
      ...this.incidents.map((i) => h("option", { value: i.id }, `#${i.id} ${i.title} (${i.borough || "—"})`)));
    if (keep && this.incidents.some((i) => i.id === keep)) this.select.value = String(keep);
    else if (this.incidents.length === 1) await this.choose(this.incidents[0].id);
    else if (!this.incidents.length) await this.choose(null);
  }

  async choose(id) {
    if (id === null) {
      this.current = null;
      this.map.circles = [];
      this.map.highlight = new Set();
      this.map.invalidate({ units: true });
      this.drawUnits();
      return;
    }
    this.select.value = String(id);
    await this.refresh(id);
    if (this.current) this.map.centreOn(this.current.lat, this.current.lon, 13);
  }

  async refresh(id = this.current ? this.current.id : null) {
    if (id === null || !this.root.isConnected || this.root.closest(".hidden")) return;
    try {
      this.current = await this.api.get(`/api/v1/incidents/${id}`);
    } catch (error) {
      this.summary.textContent = error.message;
      return;
    }
    const c = this.current;
    this.map.circles = [{ lat: c.lat, lon: c.lon, radius_m: c.radius_m, label: `#${c.id} ${c.title}` }];
    this.map.highlight = new Set(c.units.map((u) => u.device_id));
    this.map.invalidate({ units: true });
    this.drawUnits();
  }

  async assign(unit) {
    if (!this.current) {
      this.summary.textContent = "Choose an incident first.";
      return;
    }
    try {
      this.current = await this.api.post(`/api/v1/incidents/${this.current.id}/units`, { device_ids: [unit.device_id] });
      this.map.highlight = new Set(this.current.units.map((u) => u.device_id));
      this.map.invalidate({ units: true });
      this.drawUnits();
    } catch (error) {
      this.summary.textContent = error.message;
    }
  }

  async unassign(deviceId) {
    try {
      this.current = await this.api.request("DELETE", `/api/v1/incidents/${this.current.id}/units/${encodeURIComponent(deviceId)}`);
      this.map.highlight = new Set(this.current.units.map((u) => u.device_id));
      this.map.invalidate({ units: true });
      this.drawUnits();
    } catch (error) {
      this.summary.textContent = error.message;
    }
  }

  async create() {
    const data = new FormData(this.form);
    const [lon, lat] = (() => {
      const [mx, my] = [this.map.view.cx, this.map.view.cy];
      const lonC = mx * 360 - 180;
      const latC = (Math.atan(Math.sinh(Math.PI * (1 - 2 * my))) * 180) / Math.PI;
      return [lonC, latC];
    })();
    try {
      const created = await this.api.post("/api/v1/incidents", {
        title: String(data.get("title")), borough: String(data.get("borough")) || null,
        radius_m: Number(data.get("radius_m")), lat, lon,
      });
      this.form.reset();
      await this.load();
      await this.choose(created.id);
    } catch (error) {
      this.summary.textContent = error.message;
    }
  }

  drawUnits() {
    clear(this.table);
    show(this.root.querySelector(".incident-units"), this.current !== null);
    if (!this.current) {
      this.summary.textContent = "";
      return;
    }
    const c = this.current;
    let missing = 0;
    for (const a of c.units) {
      // The live feed is newer than the last REST read: prefer its state.
      const live = this.store.units.get(a.device_id) || {};
      const u = { ...a, ...pick(live) };
      const firearms = a.role === "firearms";
      const notRecording = firearms && u.recording !== "recording";
      if (notRecording) missing++;
      this.table.append(h("tr", { class: notRecording ? "not-recording" : "", dataset: { deviceId: a.device_id } },
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => this.onLocate(a.device_id) },
          a.callsign || a.device_id), firearms ? h("span", { class: "tag firearms" }, "AFO") : null),
        h("td", {}, a.officer || "—"),
        h("td", {}, u.lat === null || u.lat === undefined ? "no fix"
          : `${a.inside_area ? "inside" : "outside"} · ${u.lat.toFixed(4)}, ${u.lon.toFixed(4)}`),
        h("td", { class: isLowBattery(u) ? "warn" : "" }, fmtPct(u.battery_pct), u.charging ? " ⚡" : ""),
        h("td", { class: `rec rec-${u.online === false ? "offline" : u.recording}` },
          notRecording ? h("strong", { class: "mark" }, "NOT RECORDING") : u.recording || "—",
          u.online === false ? " (offline)" : ""),
        h("td", {}, fmtAgo(u.received_at || u.ts)),
        h("td", {}, this.onLiveView ? h("button", { type: "button", class: "small",
          onclick: () => this.onLiveView(a, c.id, `Incident #${c.id}: ${c.title}`) }, "Live view…") : null,
        h("button", { type: "button", class: "small", onclick: () => this.unassign(a.device_id) }, "Unassign"))));
    }
    // Units from boroughs outside the user's area are only counted by the API.
    const outside = c.units_outside_area ? ` (and ${c.units_outside_area} from outside your area)` : "";
    this.summary.textContent = `#${c.id} ${c.title}: ${c.units.length} units assigned${outside}` +
      (missing ? ` — ${missing} firearms unit${missing > 1 ? "s" : ""} NOT recording` : "");
    this.summary.classList.toggle("danger", missing > 0);
  }
}

function pick(live) {
  const out = {};
  for (const k of ["lat", "lon", "battery_pct", "charging", "recording", "online", "received_at", "ts"]) {
    if (live[k] !== undefined) out[k] = live[k];
  }
  return out;
}
