// The firearms commander's view of an incident: its area on the map (a circle or a drawn
// polygon), each assigned unit's distance and bearing from it, time since its last fix,
// battery and recording state, and a mark on the map that cannot be missed on any assigned
// firearms unit whose report says it is not recording (one with no report yet is shown as such
// in the table, not as not recording). Units are assigned by selection on the map, by
// callsign, or all armed units within a distance (one request, chosen by the server).
// A new incident is centred on a clicked point, a unit (by callsign) or a place by name: a
// borough, from the outlines the map has already loaded (no geocoder: the dashboard works
// offline, and the Underground data names lines, not stations).
// Refreshed from the API every few seconds and from the live feed in between.

import { clear, fmtAgo, fmtPct, h, show, throttle } from "./dom.js";
import { isLowBattery } from "./store.js";

const REFRESH_MS = 5000;
const CLOSED_PAGE = 20;
const EARTH_DEG_M = 111320; // metres per degree of latitude, as the server's geofence
const POINTS = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];
export const OUTCOMES = { resolved: "Resolved", arrest: "Arrest", stood_down: "Stood down", no_trace: "No trace",
  handed_over: "Handed over" };

// A place by name as typed, any case: the one of that name, else the first (alphabetically)
// whose name starts with it, else the first that contains it; null for none.
export function findPlace(places, text) {
  const want = text.trim().toLowerCase();
  if (!want) return null;
  const first = (test) => places.filter((p) => test(p.name.toLowerCase()))
    .sort((a, b) => a.name.localeCompare(b.name))[0];
  return first((n) => n === want) || first((n) => n.startsWith(want)) || first((n) => n.includes(want)) || null;
}

// "1.2 km NE" from the incident's centre to the unit (equirectangular, as the server measures).
export function distanceBearing(from, to) {
  const dx = (to.lon - from.lon) * EARTH_DEG_M * Math.cos((from.lat * Math.PI) / 180);
  const dy = (to.lat - from.lat) * EARTH_DEG_M;
  const d = Math.hypot(dx, dy);
  const where = d < 1000 ? `${Math.round(d)} m` : `${(d / 1000).toFixed(1)} km`;
  if (d < 5) return where;
  const bearing = ((Math.atan2(dx, dy) * 180) / Math.PI + 360) % 360;
  return `${where} ${POINTS[Math.round(bearing / 45) % 8]}`;
}

export class IncidentPanel {
  constructor({ root, api, store, map, time, onLocate, onLiveView = null, onReplay = null }) {
    this.root = root;
    this.time = time; // a ForceTime: closed incidents are after-action records, in the force's zone
    this.onLiveView = onLiveView; // (unit, incidentId): a live-view request made for this incident
    this.api = api;
    this.store = store;
    this.map = map;
    this.onLocate = onLocate;
    this.onReplay = onReplay; // (incidentId): the incident replayed, open or closed (replay.js)
    this.select = root.querySelector("select[name=incident]");
    this.table = root.querySelector("tbody");
    this.summary = root.querySelector(".incident-summary");
    this.form = root.querySelector("form.new-incident");
    this.whereInfo = root.querySelector(".where-info");
    this.callsigns = root.querySelector("#incident-callsigns");
    this.incidents = [];
    this.current = null;
    this.where = null; // the new incident's centre: {lat, lon, label} or null for the map's centre
    this.places = []; // [{name, lat, lon}]: where a new incident can be centred by name
    this.drawing = null; // a polygon being drawn: [[lon, lat], ...]
    this.closedOffset = 0;
    this.draw = throttle(() => this.drawUnits(), 500);
    this.select.addEventListener("change", () => this.choose(Number(this.select.value) || null));
    this.on("form.new-incident", "submit", () => this.create());
    this.on("form.assign-armed", "submit", (f) => this.assignArmed(Number(new FormData(f).get("within_km"))));
    this.on("form.assign-callsign", "submit", (f) => this.assignCallsign(String(new FormData(f).get("callsign"))));
    this.on("form.close-form", "submit", (f) => this.close(String(new FormData(f).get("outcome"))));
    this.on("form.closed-search", "submit", () => this.searchClosed(0));
    root.querySelector(".more-closed").addEventListener("click", () => this.searchClosed(this.closedOffset));
    root.querySelector("button.replay").addEventListener("click", () => this.current && this.onReplay(this.current.id));
    root.querySelector("button.pick").addEventListener("click", () => this.togglePicking());
    root.querySelector("button.assign-picked").addEventListener("click", () => this.assignPicked());
    root.querySelector("button.draw").addEventListener("click", () => this.startWhere());
    root.querySelector("button.finish").addEventListener("click", () => this.finishPolygon());
    this.form.elements.at_unit.addEventListener("change", () => this.atNamed(this.form.elements.at_unit.value));
    for (const radio of this.form.querySelectorAll("input[name=shape]")) {
      radio.addEventListener("change", () => this.shapeChanged());
    }
    store.subscribe((kind, changed) => {
      if (kind === "snapshot") this.fillCallsigns();
      if (this.current && (kind === "snapshot" || changed.some((u) => this.assigned(u.device_id)))) this.draw();
    });
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  on(selector, event, run) {
    const el = this.root.querySelector(selector);
    el.addEventListener(event, (e) => {
      e.preventDefault();
      run(el);
    });
  }

  setBoroughs(names) {
    for (const select of this.root.querySelectorAll("select[name=borough]")) {
      select.append(...names.map((n) => h("option", { value: n }, n)));
    }
    this.places = this.map.places(); // the outlines are loaded by now
    this.fillCallsigns();
  }

  // The suggestions of "at a callsign or place": the units, then the places.
  fillCallsigns() {
    const names = [...this.store.units.values()].map((u) => u.callsign || u.device_id).sort();
    clear(this.callsigns).append(...[...names.slice(0, 5000), ...this.places.map((p) => p.name)]
      .map((n) => h("option", { value: n })));
  }

  // A unit by callsign or device id, as typed (any case).
  findUnit(text) {
    const want = text.trim().toLowerCase();
    if (!want) return null;
    for (const u of this.store.units.values()) {
      if (u.device_id.toLowerCase() === want || (u.callsign && u.callsign.toLowerCase() === want)) return u;
    }
    return null;
  }

  assigned(deviceId) {
    return this.current !== null && this.current.units.some((u) => u.device_id === deviceId);
  }

  fail(error) {
    this.summary.textContent = error.message;
    this.summary.classList.add("danger");
  }

  async load() {
    try {
      this.incidents = await this.api.get("/api/v1/incidents");
    } catch (error) {
      this.fail(error);
      return;
    }
    const keep = this.current && this.current.status === "open" ? this.current.id : null;
    clear(this.select).append(h("option", { value: "" }, this.incidents.length ? "Choose an incident…" : "No open incidents"),
      ...this.incidents.map((i) => h("option", { value: i.id },
        `#${i.id} ${i.grade === "immediate" ? "⚠ " : ""}${i.title}${i.reference ? ` (${i.reference})` : ""}`)));
    if (keep && this.incidents.some((i) => i.id === keep)) this.select.value = String(keep);
    else if (this.incidents.length === 1) await this.choose(this.incidents[0].id);
    else if (!this.incidents.length) await this.choose(null);
  }

  async choose(id) {
    if (id === null) {
      this.current = null;
      this.map.circles = [];
      this.showOnMap();
      this.drawUnits();
      return;
    }
    if ([...this.select.options].some((o) => o.value === String(id))) this.select.value = String(id);
    await this.refresh(id);
    if (this.current) this.map.centreOn(this.current.lat, this.current.lon, 14);
  }

  async refresh(id = this.current ? this.current.id : null) {
    if (id === null || !this.root.isConnected || this.root.closest(".hidden")) return;
    try {
      this.current = await this.api.get(`/api/v1/incidents/${id}`);
    } catch (error) {
      this.fail(error);
      return;
    }
    this.showOnMap();
    this.drawUnits();
  }

  // The incident's area, its assigned units (an orange double frame) and, on the marker of
  // each assigned firearms unit not recording, "NOT RECORDING".
  showOnMap() {
    const c = this.current;
    if (c) {
      this.map.circles = [{ lat: c.lat, lon: c.lon, radius_m: c.radius_m, polygon: c.polygon,
        label: `#${c.id} ${c.title}${c.status === "closed" ? " (closed)" : ""}` }];
    }
    const open = c !== null && c.status === "open";
    this.map.highlight = new Set(open ? c.units.map((u) => u.device_id) : []);
    this.map.alarms = new Set(open ? c.units.filter((a) => notRecording(a, this.live(a))).map((a) => a.device_id) : []);
    this.map.invalidate({ units: true });
  }

  live(a) {
    // The live feed is newer than the last REST read: prefer its state.
    return { ...a, ...pick(this.store.units.get(a.device_id) || {}) };
  }

  async change(method, path, body) {
    try {
      this.current = await this.api.request(method, path, { body });
      this.showOnMap();
      this.drawUnits();
      return true;
    } catch (error) {
      this.fail(error);
      return false;
    }
  }

  async assignIds(deviceIds) {
    if (!this.current) {
      this.summary.textContent = "Choose an incident first.";
      return false;
    }
    return this.change("POST", `/api/v1/incidents/${this.current.id}/units`, { device_ids: deviceIds });
  }

  assign(unit) {
    return this.assignIds([unit.device_id]);
  }

  async assignCallsign(text) {
    const unit = this.findUnit(text);
    if (!unit) {
      this.fail(new Error(`No unit with callsign ${text}.`));
      return;
    }
    if (await this.assign(unit)) this.root.querySelector("form.assign-callsign").reset();
  }

  assignArmed(withinKm) {
    if (!this.current) return;
    this.change("POST", `/api/v1/incidents/${this.current.id}/units/armed-within`, { within_km: withinKm });
  }

  togglePicking() {
    const button = this.root.querySelector("button.pick");
    if (this.map.mode && this.map.mode.picking) {
      this.stopPicking();
      return;
    }
    this.stopDrawing();
    button.textContent = "Stop selecting";
    button.classList.add("active");
    this.map.setMode({
      picking: true,
      onUnit: (u) => {
        if (this.map.picked.has(u.device_id)) this.map.picked.delete(u.device_id);
        else this.map.picked.add(u.device_id);
        this.pickedChanged();
      },
    });
    this.pickedChanged();
  }

  stopPicking() {
    if (this.map.mode && this.map.mode.picking) this.map.setMode(null);
    const button = this.root.querySelector("button.pick");
    button.textContent = "Select on map";
    button.classList.remove("active");
    this.map.picked = new Set();
    this.pickedChanged();
  }

  pickedChanged() {
    const n = this.map.picked.size;
    const button = this.root.querySelector("button.assign-picked");
    button.textContent = `Assign ${n} selected`;
    show(button, n > 0);
    this.map.invalidate({ units: true });
  }

  async assignPicked() {
    if (await this.assignIds([...this.map.picked])) this.stopPicking();
  }

  async unassign(deviceId) {
    await this.change("DELETE", `/api/v1/incidents/${this.current.id}/units/${encodeURIComponent(deviceId)}`);
  }

  async close(outcome) {
    if (!this.current) return;
    const id = this.current.id;
    if (await this.change("POST", `/api/v1/incidents/${id}/close`, { outcome })) {
      this.root.querySelector("details.close-incident").open = false;
      this.current = null;
      this.map.circles = [];
      this.showOnMap();
      this.summary.textContent = `#${id} closed: ${OUTCOMES[outcome]}.`;
      this.summary.classList.remove("danger");
      await this.load();
    }
  }

  // ---- a new incident: where (a clicked point, a unit, or the map's centre) and its shape

  shape() {
    return new FormData(this.form).get("shape");
  }

  shapeChanged() {
    this.stopDrawing();
    const polygon = this.shape() === "polygon";
    show(this.form.querySelector(".radius"), !polygon);
    this.form.elements.radius_m.required = !polygon;
    show(this.form.elements.at_unit, !polygon);
    this.form.querySelector("button.draw").textContent = polygon ? "Draw on map" : "Pick on map";
    this.whereInfo.textContent = polygon ? "Click the corners on the map; double-click or Finish to close it."
      : "Centre: the map's centre.";
  }

  startWhere() {
    this.stopPicking();
    if (this.shape() === "polygon") {
      this.drawing = [];
      this.map.draft = this.drawing;
      show(this.form.querySelector("button.finish"), true);
      this.whereInfo.textContent = "Click each corner; double-click or Finish polygon to close it.";
      this.map.setMode({
        onPoint: (lat, lon) => {
          const last = this.drawing[this.drawing.length - 1];
          if (!last || last[0] !== lon || last[1] !== lat) this.drawing.push([lon, lat]);
          this.whereInfo.textContent = `${this.drawing.length} corners; double-click or Finish polygon to close it.`;
          this.map.invalidate();
        },
        onFinish: () => this.finishPolygon(),
      });
      return;
    }
    this.whereInfo.textContent = "Click the incident's centre on the map.";
    this.map.setMode({
      onPoint: (lat, lon) => this.setWhere({ lat, lon, label: `${lat.toFixed(5)}, ${lon.toFixed(5)}` }),
      onUnit: (u) => this.setWhere({ lat: u.lat, lon: u.lon, label: u.callsign || u.device_id }),
    });
  }

  setWhere(where) {
    this.where = where;
    this.map.setMode(null);
    this.whereInfo.textContent = `Centre: ${where.label}.`;
  }

  // A unit with a fix by its callsign or id, else a place by (part of) its name.
  atNamed(text) {
    const unit = this.findUnit(text);
    if (unit && typeof unit.lat === "number") {
      this.setWhere({ lat: unit.lat, lon: unit.lon, label: `at ${unit.callsign || unit.device_id}` });
      return;
    }
    const place = findPlace(this.places, text);
    if (!place) {
      this.whereInfo.textContent = `No unit with a fix, and no place, called ${text}.`;
      return;
    }
    const borough = this.form.elements.borough;
    if (!borough.value) borough.value = place.name; // a borough's own name, if the user gave none
    this.map.centreOn(place.lat, place.lon, 13); // a name typed: show where it is
    this.setWhere({ lat: place.lat, lon: place.lon, label: `${place.name} (the borough's centre)` });
  }

  finishPolygon() {
    if (!this.drawing) return;
    this.map.setMode(null);
    show(this.form.querySelector("button.finish"), false);
    this.whereInfo.textContent = this.drawing.length >= 3 ? `Polygon of ${this.drawing.length} corners.`
      : "A polygon needs at least 3 corners: Draw on map again.";
  }

  stopDrawing() {
    if (this.map.mode && !this.map.mode.picking) this.map.setMode(null);
    this.drawing = null;
    this.map.draft = null;
    show(this.form.querySelector("button.finish"), false);
    this.map.invalidate();
  }

  async create() {
    const data = new FormData(this.form);
    const body = {
      title: String(data.get("title")), borough: String(data.get("borough")) || null,
      grade: String(data.get("grade")), reference: String(data.get("reference")).trim() || null,
      commander: String(data.get("commander")).trim() || null,
    };
    if (this.shape() === "polygon") {
      if (!this.drawing || this.drawing.length < 3) {
        this.whereInfo.textContent = "Draw the polygon on the map first (at least 3 corners).";
        return;
      }
      body.polygon = [...this.drawing, this.drawing[0]];
    } else {
      const centre = this.where || (() => {
        const [lat, lon] = this.map.latLonAt(this.map.width / 2, this.map.height / 2);
        return { lat, lon };
      })();
      Object.assign(body, { lat: centre.lat, lon: centre.lon, radius_m: Number(data.get("radius_m")) });
    }
    try {
      const created = await this.api.post("/api/v1/incidents", body);
      this.form.reset();
      this.where = null;
      this.stopDrawing();
      this.shapeChanged();
      this.form.closest("details").open = false;
      await this.load();
      await this.choose(created.id);
    } catch (error) {
      this.whereInfo.textContent = error.message;
    }
  }

  // ---- closed incidents

  when(ts) {
    return this.time.format(ts) || "—";
  }

  async searchClosed(offset) {
    const data = new FormData(this.root.querySelector("form.closed-search"));
    const query = { limit: CLOSED_PAGE, offset };
    // A day's start in the force's time zone (forcetime.js), whatever the browser's zone.
    const day = (v, plus) => {
      const d = new Date(`${v}T00:00:00Z`);
      d.setUTCDate(d.getUTCDate() + plus);
      return this.time.toUtc(`${d.toISOString().slice(0, 10)}T00:00:00`);
    };
    if (data.get("from")) query.from = day(data.get("from"), 0);
    if (data.get("to")) query.to = day(data.get("to"), 1); // the whole of the last day
    if (data.get("borough")) query.borough = data.get("borough");
    if (String(data.get("reference")).trim()) query.reference = String(data.get("reference")).trim();
    const list = this.root.querySelector(".closed-list");
    let page;
    try {
      page = await this.api.get("/api/v1/incidents/closed", query);
    } catch (error) {
      clear(list).append(h("li", { class: "danger" }, error.message));
      return;
    }
    if (offset === 0) clear(list);
    list.append(...page.items.map((i) => h("li", { class: "closed-item", dataset: { incidentId: i.id } },
      h("button", { type: "button", class: "link", onclick: () => this.choose(i.id) }, `#${i.id} ${i.title}`),
      h("span", { class: "muted" }, ` ${i.reference || "no reference"} · ${OUTCOMES[i.outcome] || "—"} · `
        + `${this.when(i.closed_at)} · ${i.borough || "all boroughs"}`))));
    if (offset === 0 && !page.items.length) list.append(h("li", { class: "muted" }, "No closed incidents found."));
    this.closedOffset = offset + page.items.length;
    show(this.root.querySelector(".more-closed"), page.items.length === CLOSED_PAGE);
  }

  // ---- the table

  drawUnits() {
    clear(this.table);
    show(this.root.querySelector(".incident-units"), this.current !== null);
    if (!this.current) return;
    const c = this.current;
    const open = c.status === "open";
    show(this.root.querySelector(".assign-tools"), open);
    show(this.root.querySelector("details.close-incident"), open);
    show(this.root.querySelector("button.replay"), this.onReplay !== null);
    let missing = 0;
    let unknown = 0;
    for (const a of c.units) {
      const u = this.live(a);
      const firearms = a.role === "firearms";
      const alarm = open && notRecording(a, u);
      const silent = open && noReport(a, u);
      if (alarm) missing++;
      if (silent) unknown++;
      const fixed = typeof u.lat === "number";
      const lastFix = u.last_fix_at || (u.gps_fix ? u.ts : null);
      this.table.append(h("tr", { class: alarm ? "not-recording" : "", dataset: { deviceId: a.device_id } },
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => this.onLocate(a.device_id) },
          a.callsign || a.device_id), firearms ? h("span", { class: "tag firearms" }, "AFO") : null,
        h("div", { class: "muted officer" }, a.officer || "")),
        h("td", { class: "dist" }, fixed ? distanceBearing(c, u) : "no fix",
          fixed ? h("div", { class: "muted" }, a.inside_area ? "inside" : "outside") : null),
        h("td", { class: lastFix ? "" : "warn" }, lastFix ? fmtAgo(lastFix).replace(" ago", "") : "never"),
        h("td", { class: isLowBattery(u) ? "warn" : "" }, fmtPct(u.battery_pct), u.charging ? " ⚡" : ""),
        h("td", { class: `rec rec-${u.online === false ? "offline" : u.recording}` },
          alarm ? h("strong", { class: "mark" }, "NOT RECORDING")
            : silent ? h("span", { class: "warn no-report" }, "no report since assignment") : u.recording || "—",
          u.online === false ? " (offline)" : ""),
        h("td", { class: "acts" }, open && this.onLiveView ? h("button", { type: "button", class: "small live-view",
          title: "Live view, for this incident", "aria-label": `Live view of ${a.callsign || a.device_id}`,
          onclick: () => this.onLiveView(a, c.id, `Incident #${c.id}: ${c.title}`) }, "Live…") : null,
          open ? h("button", { type: "button", class: "small unassign", title: "Unassign",
          "aria-label": `Unassign ${a.callsign || a.device_id}`, onclick: () => this.unassign(a.device_id) }, "✕")
          : null)));
    }
    // Units from boroughs outside the user's area are only counted by the API.
    const outside = c.units_outside_area ? ` (and ${c.units_outside_area} from outside your area)` : "";
    const head = `#${c.id} ${c.title} · ${c.grade.toUpperCase()}${c.reference ? ` · ${c.reference}` : ""}` +
      `${c.commander ? ` · cmdr ${c.commander}` : ""}`;
    this.summary.textContent = (open ? `${head}: ${c.units.length} unit${c.units.length === 1 ? "" : "s"} assigned${outside}`
      : `${head}: closed ${this.when(c.closed_at)} by ${c.closed_by || "—"}, ${OUTCOMES[c.outcome] || "no outcome"}`) +
      (missing ? ` — ${missing} firearms unit${missing > 1 ? "s" : ""} NOT recording` : "") +
      (unknown ? ` — ${unknown} with no report since assignment` : "");
    this.summary.classList.toggle("danger", missing > 0);
    this.map.alarms = new Set(open ? c.units.filter((a) => notRecording(a, this.live(a))).map((a) => a.device_id) : []);
    this.map.invalidate({ units: true });
  }
}

// On what a report says, as the server's alert: a firearms unit with no recording state yet
// is "no report", not known to be off.
function notRecording(assigned, live) {
  return assigned.role === "firearms" && live.recording != null && live.recording !== "recording";
}

function noReport(assigned, live) {
  return assigned.role === "firearms" && live.recording == null;
}

function pick(live) {
  const out = {};
  for (const k of ["lat", "lon", "battery_pct", "charging", "recording", "online", "received_at", "ts", "gps_fix",
    "last_fix_at"]) {
    if (live[k] !== undefined) out[k] = live[k];
  }
  return out;
}
