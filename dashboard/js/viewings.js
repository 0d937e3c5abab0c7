// The viewing record, for auditors (and admins): who watched which unit, when, for how long,
// under which consent and why (GET /api/v1/live-view/sessions), filtered by unit, the officer
// who wore it then (the report an officer asks for: "who watched me"), viewer, time window
// and consent basis, and the same filter exported as CSV (made by the server:
// area-filtered, its cells safe in a spreadsheet, and recorded in the audit log).
// "Who watched unit X between 14:00 and 16:00, and why" is one filter and one table.

import { clear, h } from "./dom.js";
import { ForceTime } from "./forcetime.js";

const LIMIT = 1000;
const BASIS = { officer_request: "officer asked (watch me)", accepted_request: "officer accepted a request",
                policy_recording: "policy: firearms unit recording" };
function duration(start, end) {
  if (!end) return "still watching";
  const s = Math.round((new Date(end) - new Date(start)) / 1000);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

export class ViewingsView {
  // time: a ForceTime; onAudit({ actor, device_id, session_id, start }): show the viewing's
  // audit entries (null where the role has no audit view).
  constructor({ root, api, time, onAudit = null }) {
    this.root = root;
    this.api = api;
    this.time = time;
    this.onAudit = onAudit;
    this.form = root.querySelector("form");
    this.table = root.querySelector("tbody");
    this.status = root.querySelector(".viewings-status");
    this.exportStatus = root.querySelector(".viewings-export-status");
    root.querySelector("button.export").addEventListener("click", () => this.exportCsv());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.load();
    });
  }

  // The form as the API's query (a datetime-local is read in the force's time zone).
  query() {
    const data = new FormData(this.form);
    const iso = (v) => this.time.toUtc(v);
    const text = (name) => String(data.get(name) || "").trim();
    return { device_id: text("device_id"), officer: text("officer"), viewer: text("viewer"),
             basis: data.get("basis"), since: iso(data.get("since")), until: iso(data.get("until")) };
  }

  async load() {
    this.status.textContent = "Loading…";
    clear(this.table);
    let rows;
    try {
      rows = await this.api.get("/api/v1/live-view/sessions", { ...this.query(), limit: LIMIT });
    } catch (error) {
      this.status.textContent = `Could not read the viewing record: ${error.message}`;
      return;
    }
    this.status.textContent = `${rows.length} session${rows.length === 1 ? "" : "s"}` +
      (rows.length >= LIMIT ? ` (the newest ${LIMIT}; narrow the filter, or export it all)` : "");
    const when = (ts) => this.time.format(ts);
    for (const v of rows) {
      const ended = v.refused ? `refused: ${v.refused}` : v.end_reason ? v.end_reason.replaceAll("_", " ") : "";
      this.table.append(h("tr", { dataset: { sessionId: v.session_id || "", deviceId: v.device_id } },
        h("td", {}, when(v.started_at)), h("td", {}, when(v.ended_at)),
        h("td", {}, v.refused ? "—" : duration(v.started_at, v.ended_at)),
        h("td", {}, v.callsign ? `${v.callsign} (${v.device_id})` : v.device_id), h("td", {}, v.borough || ""),
        h("td", { class: "officer" }, v.officer || "—"),
        h("td", { class: "viewer" }, v.viewer), h("td", {}, v.role.replaceAll("_", " ")),
        h("td", { class: "reason" }, v.reason || ""), h("td", {}, BASIS[v.basis] || "—"), h("td", {}, ended),
        h("td", {}, this.onAudit && v.session_id ? h("button", { type: "button", class: "small link audit-link",
          onclick: () => this.onAudit({ actor: v.viewer, device_id: v.device_id, session_id: v.session_id,
                                        start: v.started_at }) }, "Audit entries") : "")));
    }
  }

  async exportCsv() {
    this.exportStatus.textContent = "Preparing…";
    try {
      const response = await this.api.request("GET", "/api/v1/live-view/sessions.csv",
        { query: this.query(), raw: true });
      const blob = await response.blob();
      const match = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
      const a = h("a", { href: URL.createObjectURL(blob), download: match ? match[1] : "viewings.csv", class: "hidden" });
      document.body.append(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      this.exportStatus.textContent = `Exported ${response.headers.get("x-row-count")} sessions (recorded in the audit log).`;
    } catch (error) {
      this.exportStatus.textContent = `Export failed: ${error.message}`;
    }
  }
}
