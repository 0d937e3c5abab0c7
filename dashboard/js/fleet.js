// Fleet health for fleet managers: counts, the battery distribution and the state of the
// fleet as charts, devices silent for more than a day, storage warnings, a per-borough
// table, and the CSV export (made by the server: area-filtered, bounded and audited).
// Above them, the open system alerts (no unit: a storage job failing), for fleet managers and
// admins: read over REST with the summary, and again as soon as a new one arrives live.

import { clear, fmtAgo, fmtPct, h, throttle } from "./dom.js";
import { LOW_BATTERY_PCT, isLowBattery } from "./store.js";
import { STATE_COLOURS } from "./map.js";

const SUMMARY_REFRESH_MS = 30000;
const STORAGE_WARN_PCT = 90;
const SYSTEM_KIND_NAMES = { storage_job_failing: "Storage job failing" };

export class FleetView {
  constructor({ root, api, store }) {
    this.root = root;
    this.api = api;
    this.store = store;
    this.cards = root.querySelector(".cards");
    this.battery = root.querySelector("canvas.battery-chart");
    this.states = root.querySelector("canvas.state-chart");
    this.boroughTable = root.querySelector("table.boroughs tbody");
    this.notSeenTable = root.querySelector("table.not-seen tbody");
    this.storageTable = root.querySelector("table.storage tbody");
    this.exportButton = root.querySelector("button.export");
    this.exportBorough = root.querySelector("select[name=export-borough]");
    this.exportStatus = root.querySelector(".export-status");
    this.render = throttle(() => this.draw(), 1000);
    this.summary = null;
    this.systemPanel = root.querySelector(".system-alerts-panel");
    this.systemList = root.querySelector(".system-alerts");
    store.subscribe(() => this.render());
    store.subscribeAlerts((added) => {
      if (added.some((a) => a.device_id === null)) this.loadSystemAlerts();
    });
    this.exportButton.addEventListener("click", () => this.exportCsv());
    this.timer = null;
  }

  start() {
    this.loadSummary();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.loadSummary(), SUMMARY_REFRESH_MS);
    this.render();
  }

  setBoroughs(names) {
    clear(this.exportBorough).append(h("option", { value: "" }, "All my boroughs"),
      ...names.map((n) => h("option", { value: n }, n)));
  }

  async loadSummary() {
    try {
      this.summary = await this.api.get("/api/v1/fleet/summary", { not_seen_hours: 24 });
    } catch (error) {
      this.summary = { error: error.message };
    }
    this.drawNotSeen();
    this.loadSystemAlerts();
  }

  async loadSystemAlerts() {
    const found = [];
    try {
      for (const kind of Object.keys(SYSTEM_KIND_NAMES)) {
        found.push(...(await this.api.get("/api/v1/alerts", { kind, status: "open", limit: 100 })).items);
      }
    } catch (error) {
      return;  // shown as they were; the next refresh tries again
    }
    clear(this.systemList).append(...found.map((a) =>
      h("li", { class: "system-alert", dataset: { alertId: a.id, kind: a.kind } },
        h("strong", {}, SYSTEM_KIND_NAMES[a.kind] || a.kind), " ", a.detail,
        h("span", { class: "muted" }, ` · raised ${fmtAgo(a.raised_at)}`))));
    this.systemPanel.classList.toggle("hidden", !found.length);
  }

  async exportCsv() {
    this.exportStatus.textContent = "Preparing…";
    try {
      const response = await this.api.request("GET", "/api/v1/fleet/export.csv",
        { query: { borough: this.exportBorough.value }, raw: true });
      const blob = await response.blob();
      const match = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
      const a = h("a", { href: URL.createObjectURL(blob), download: match ? match[1] : "fleet.csv", class: "hidden" });
      document.body.append(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      this.exportStatus.textContent = `Exported ${response.headers.get("x-row-count")} devices (recorded in the audit log).`;
    } catch (error) {
      this.exportStatus.textContent = `Export failed: ${error.message}`;
    }
  }

  draw() {
    if (this.root.classList.contains("hidden")) return;
    const units = [...this.store.units.values()];
    const count = (pred) => units.reduce((n, u) => n + (pred(u) ? 1 : 0), 0);
    const cards = [
      ["Devices", units.length, ""],
      ["Online", count((u) => u.online), ""],
      ["Recording", count((u) => u.state === "recording"), ""],
      ["Offline", count((u) => !u.online), "warn"],
      [`Battery < ${LOW_BATTERY_PCT}%`, count(isLowBattery), "warn"],
      [`Storage ≥ ${STORAGE_WARN_PCT}%`, count((u) => u.storage_pct >= STORAGE_WARN_PCT), "warn"],
      ["Docked", count((u) => u.docked), ""],
      ["Charging", count((u) => u.charging), ""],
    ];
    clear(this.cards).append(...cards.map(([label, value, cls]) =>
      h("div", { class: `card ${value && cls ? cls : ""}` }, h("span", { class: "value" }, value.toLocaleString()),
        h("span", { class: "label" }, label))));
    this.drawBattery(units);
    this.drawStates(units);
    this.drawBoroughs(units);
    this.drawStorage(units);
  }

  drawBattery(units) {
    const bins = new Array(10).fill(0);
    let unknown = 0;
    for (const u of units) {
      if (u.battery_pct === null || u.battery_pct === undefined) unknown++;
      else bins[Math.min(9, Math.floor(u.battery_pct / 10))]++;
    }
    barChart(this.battery, bins.map((n, i) => ({
      label: `${i * 10}–${i * 10 + 10}`, value: n,
      colour: i < 1 ? "#ff453a" : i < 2 ? "#ff9f0a" : i < 4 ? "#ffd60a" : "#30d158",
    })), { title: `Battery level (% charge), ${units.length - unknown} devices${unknown ? `, ${unknown} never reported` : ""}` });
  }

  drawStates(units) {
    const states = ["recording", "buffering", "off", "offline"];
    barChart(this.states, states.map((s) => ({ label: s, value: units.filter((u) => u.state === s).length,
      colour: STATE_COLOURS[s] })), { title: "Devices by state" });
  }

  drawBoroughs(units) {
    const rows = new Map();
    for (const u of units) {
      const name = u.borough || "unassigned";
      let r = rows.get(name);
      if (!r) rows.set(name, (r = { total: 0, online: 0, recording: 0, low: 0, storage: 0, docked: 0, charging: 0, sum: 0, n: 0 }));
      r.total++;
      if (u.online) r.online++;
      if (u.state === "recording") r.recording++;
      if (isLowBattery(u)) r.low++;
      if (u.storage_pct >= STORAGE_WARN_PCT) r.storage++;
      if (u.docked) r.docked++;
      if (u.charging) r.charging++;
      if (typeof u.battery_pct === "number") { r.sum += u.battery_pct; r.n++; }
    }
    clear(this.boroughTable).append(...[...rows.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, r]) =>
      h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, r.total), h("td", {}, r.online),
        h("td", { class: r.total - r.online ? "warn" : "" }, r.total - r.online), h("td", {}, r.recording),
        h("td", { class: r.low ? "warn" : "" }, r.low), h("td", { class: r.storage ? "warn" : "" }, r.storage),
        h("td", {}, r.docked), h("td", {}, r.charging), h("td", {}, r.n ? fmtPct(r.sum / r.n) : "—"))));
  }

  drawStorage(units) {
    const full = units.filter((u) => u.storage_pct >= STORAGE_WARN_PCT).sort((a, b) => b.storage_pct - a.storage_pct);
    clear(this.storageTable).append(...full.slice(0, 100).map((u) =>
      h("tr", {}, h("td", {}, u.device_id), h("td", {}, u.callsign || "—"), h("td", {}, u.borough || "—"),
        h("td", { class: "warn" }, fmtPct(u.storage_pct)), h("td", {}, u.docked ? "docked" : "in use"))));
    if (!full.length) this.storageTable.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No device is nearly full.")));
    else if (full.length > 100) this.storageTable.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, `and ${full.length - 100} more`)));
  }

  drawNotSeen() {
    clear(this.notSeenTable);
    if (!this.summary || this.summary.error) {
      this.notSeenTable.append(h("tr", {}, h("td", { colspan: 4, class: "error" }, this.summary ? this.summary.error : "")));
      return;
    }
    const rows = this.summary.not_seen;
    if (!rows.length) this.notSeenTable.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "Every device reported in the last 24 hours.")));
    for (const r of rows.slice(0, 200)) {
      this.notSeenTable.append(h("tr", {}, h("td", {}, r.device_id), h("td", {}, r.callsign || "—"),
        h("td", {}, r.borough || "—"), h("td", {}, r.last_seen ? fmtAgo(r.last_seen) : "never")));
    }
    if (rows.length > 200) this.notSeenTable.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, `and ${rows.length - 200} more`)));
  }
}

// A bar chart drawn on a canvas sized by CSS: labels under the bars, values above them.
function barChart(canvas, bars, { title }) {
  const rect = canvas.getBoundingClientRect();
  const dpr = Math.min(2, window.devicePixelRatio || 1);
  const w = Math.max(200, Math.round(rect.width));
  const hgt = Math.max(150, Math.round(rect.height));
  canvas.width = w * dpr;
  canvas.height = hgt * dpr;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const font = parseFloat(getComputedStyle(canvas).fontSize) || 13;
  ctx.clearRect(0, 0, w, hgt);
  ctx.fillStyle = "#c9d4df";
  ctx.font = `600 ${font}px system-ui, sans-serif`;
  ctx.textAlign = "left";
  ctx.fillText(title, 4, font + 2);
  const top = font * 2 + 14;
  const bottom = hgt - font - 10;
  const max = Math.max(1, ...bars.map((b) => b.value));
  const slot = (w - 8) / bars.length;
  ctx.textAlign = "center";
  ctx.font = `${font * 0.9}px system-ui, sans-serif`;
  bars.forEach((b, i) => {
    const bh = ((bottom - top) * b.value) / max;
    const x = 4 + i * slot;
    ctx.fillStyle = b.colour;
    ctx.fillRect(x + slot * 0.15, bottom - bh, slot * 0.7, bh);
    ctx.fillStyle = "#e8eef4";
    ctx.fillText(b.value.toLocaleString(), x + slot / 2, bottom - bh - 4);
    ctx.fillStyle = "#9fb0c0";
    ctx.fillText(b.label, x + slot / 2, hgt - 6);
  });
  canvas.setAttribute("aria-label", `${title}: ${bars.map((b) => `${b.label} ${b.value}`).join(", ")}`);
}
