// The incident record, for auditors and admins: the open incidents and a search of the closed
// ones (by when they closed, borough and reference), each with "Export", which downloads its
// disclosure archive (GET /api/v1/incidents/{id}/export.zip: units, officers, tracks, events,
// alerts, viewings and a manifest carrying the audit chain's head; made by the server,
// area-filtered, and recorded in the audit log). Auditors have no map: this is where they
// find an incident by its reference.

import { clear, h, show } from "./dom.js";
import { OUTCOMES } from "./incidents.js";

const PAGE = 50;

export class IncidentRecordView {
  // time: a ForceTime (dates are entered and shown in the force's zone).
  constructor({ root, api, time }) {
    this.root = root;
    this.api = api;
    this.time = time;
    this.form = root.querySelector("form");
    this.open = root.querySelector("tbody.open-incidents");
    this.closed = root.querySelector("tbody.closed-incidents");
    this.status = root.querySelector(".incident-record-status");
    this.exportStatus = root.querySelector(".incident-export-status");
    this.more = root.querySelector("button.more");
    this.offset = 0;
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.search(0);
    });
    this.more.addEventListener("click", () => this.search(this.offset));
  }

  setBoroughs(names) {
    this.form.querySelector("select[name=borough]").append(...names.map((n) => h("option", { value: n }, n)));
  }

  async load() {
    clear(this.open);
    try {
      const open = await this.api.get("/api/v1/incidents");
      this.open.append(...open.map((i) => this.row(i)));
      if (!open.length) this.open.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No open incidents.")));
    } catch (error) {
      this.status.textContent = `Could not read the open incidents: ${error.message}`;
    }
    await this.search(0);
  }

  // The form as the API's query: a day's start in the force's zone, and the whole of the last day.
  query(offset) {
    const data = new FormData(this.form);
    const query = { limit: PAGE, offset };
    const day = (v, plus) => {
      const d = new Date(`${v}T00:00:00Z`);
      d.setUTCDate(d.getUTCDate() + plus);
      return this.time.toUtc(`${d.toISOString().slice(0, 10)}T00:00:00`);
    };
    if (data.get("from")) query.from = day(data.get("from"), 0);
    if (data.get("to")) query.to = day(data.get("to"), 1);
    if (data.get("borough")) query.borough = data.get("borough");
    const reference = String(data.get("reference") || "").trim();
    if (reference) query.reference = reference;
    return query;
  }

  async search(offset) {
    let page;
    try {
      page = await this.api.get("/api/v1/incidents/closed", this.query(offset));
    } catch (error) {
      this.status.textContent = `Could not search the closed incidents: ${error.message}`;
      return;
    }
    if (offset === 0) clear(this.closed);
    this.closed.append(...page.items.map((i) => this.row(i)));
    this.offset = offset + page.items.length;
    this.status.textContent = this.offset ? `${this.offset} closed incident${this.offset === 1 ? "" : "s"} shown`
      : "No closed incidents found.";
    show(this.more, page.items.length === PAGE);
  }

  row(i) {
    const when = (ts) => this.time.format(ts) || "—";
    return h("tr", { dataset: { incidentId: i.id } },
      h("td", {}, `#${i.id}`), h("td", {}, i.title), h("td", {}, i.reference || "—"), h("td", {}, i.borough || "—"),
      h("td", {}, when(i.created_at)),
      h("td", {}, i.status === "closed" ? `${when(i.closed_at)} · ${OUTCOMES[i.outcome] || "no outcome"}` : "open"),
      h("td", {}, h("button", { type: "button", class: "small export", onclick: () => this.exportZip(i) }, "Export")));
  }

  async exportZip(incident) {
    this.exportStatus.textContent = `Preparing the export of #${incident.id}…`;
    try {
      const response = await this.api.request("GET", `/api/v1/incidents/${incident.id}/export.zip`, { raw: true });
      const blob = await response.blob();
      const match = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
      const a = h("a", { href: URL.createObjectURL(blob), download: match ? match[1] : `incident-${incident.id}.zip`,
        class: "hidden" });
      document.body.append(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      this.exportStatus.textContent = `Exported #${incident.id} (recorded in the audit log).`;
    } catch (error) {
      this.exportStatus.textContent = `Export of #${incident.id} failed: ${error.message}`;
    }
  }
}
