// The page's picture of the fleet: every unit it may see (merged from the live feed's
// snapshot and deltas, or REST pages for roles not on the feed) and the open alerts.
// Listeners are told *that* something changed; the views decide how often to redraw.

export const LOW_BATTERY_PCT = 20;
const SEVERITY_RANK = { critical: 0, high: 1, warning: 2, info: 3 };

// Web Mercator, as tile servers use it: x, y in 0..1 over the world.
export function mercator(lat, lon) {
  const s = Math.sin((lat * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}

export function unitState(u) {
  if (!u.online) return "offline";
  return u.recording || "off";
}

// Flags beyond the state; a unit can be recording and low on battery at once.
export function isLowBattery(u) {
  return u.battery_pct !== null && u.battery_pct !== undefined && u.battery_pct < LOW_BATTERY_PCT && !u.charging;
}

export class UnitStore {
  constructor() {
    this.units = new Map();
    this.alerts = new Map(); // id -> alert (open and acknowledged)
    this.emergencies = new Set(); // device ids with an emergency alert not resolved
    this.listeners = new Set();
    this.alertListeners = new Set();
    this.version = 0;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  subscribeAlerts(fn) {
    this.alertListeners.add(fn);
    return () => this.alertListeners.delete(fn);
  }

  replaceUnits(list) {
    this.units = new Map();
    this.mergeUnits(list, "snapshot");
  }

  mergeUnits(list, kind = "delta") {
    const changed = [];
    for (const incoming of list) {
      let u = this.units.get(incoming.device_id);
      if (!u) {
        u = { device_id: incoming.device_id, mx: NaN, my: NaN, key: "" };
        this.units.set(incoming.device_id, u);
      }
      Object.assign(u, incoming);
      if (incoming.lat !== undefined || incoming.lon !== undefined) {
        if (u.lat !== null && u.lon !== null && u.lat !== undefined && u.lon !== undefined) {
          [u.mx, u.my] = mercator(u.lat, u.lon);
        } else {
          u.mx = NaN;
          u.my = NaN;
        }
      }
      if ("callsign" in incoming || "officer" in incoming || !u.key) {
        u.key = `${u.device_id} ${u.callsign || ""} ${u.officer || ""}`.toLowerCase();
      }
      u.state = unitState(u);
      changed.push(u);
    }
    this.version += 1;
    for (const fn of this.listeners) fn(kind, changed);
  }

  // Units gone from this view (moved out of the area, or retired).
  removeUnits(ids) {
    const removed = [];
    for (const id of ids) {
      const u = this.units.get(id);
      if (u) {
        this.units.delete(id);
        removed.push(u);
      }
    }
    if (!removed.length) return;
    this.version += 1;
    for (const fn of this.listeners) fn("removed", removed);
  }

  replaceAlerts(list) {
    this.alerts = new Map();
    this.emergencies = new Set();
    this.mergeAlerts(list, { fresh: false });
  }

  // fresh: these alerts arrived live (so a new open one deserves the operator's attention).
  mergeAlerts(list, { fresh }) {
    const added = [];
    for (const a of list) {
      const unit = this.units.get(a.device_id);
      const merged = { ...(this.alerts.get(a.id) || {}), ...a };
      if (unit) {
        merged.callsign = merged.callsign || unit.callsign;
        merged.role = merged.role || unit.role;
      }
      if (a.status === "resolved") {
        this.alerts.delete(a.id);
      } else {
        // An escalation, to either level, re-announces an alert already shown (docs/api.md, "Escalation").
        const escalated = (a.escalation_level || 0) > ((this.alerts.get(a.id) || {}).escalation_level || 0);
        if (fresh && (!this.alerts.has(a.id) || escalated) && a.status === "open") {
          merged.fresh = true;
          added.push(merged);
        }
        this.alerts.set(a.id, merged);
      }
    }
    this.emergencies = new Set([...this.alerts.values()].filter((a) => a.kind === "emergency").map((a) => a.device_id));
    this.version += 1;
    for (const fn of this.alertListeners) fn(added);
    for (const fn of this.listeners) fn("alerts", []);
  }

  sortedAlerts() {
    return [...this.alerts.values()].sort(
      (a, b) =>
        (a.status === "open" ? 0 : 1) - (b.status === "open" ? 0 : 1) ||
        (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9) ||
        (a.raised_at < b.raised_at ? 1 : a.raised_at > b.raised_at ? -1 : 0),
    );
  }
}

// The map's and list's filter: borough, role, state (or flag) and a free-text search.
export class UnitFilter {
  constructor() {
    this.borough = "";
    this.role = "";
    this.state = "";
    this.search = "";
  }

  active() {
    return Boolean(this.borough || this.role || this.state || this.search);
  }

  matcher(store) {
    const { borough, role, state } = this;
    const search = this.search.trim().toLowerCase();
    const emergencies = store.emergencies;
    return (u) => {
      if (borough && u.borough !== borough) return false;
      if (role && u.role !== role) return false;
      if (search && !u.key.includes(search)) return false;
      if (!state) return true;
      switch (state) {
        case "low_battery":
          return isLowBattery(u);
        case "emergency":
          return emergencies.has(u.device_id);
        case "live":
          return Boolean(u.live);
        default:
          return u.state === state;
      }
    };
  }
}
