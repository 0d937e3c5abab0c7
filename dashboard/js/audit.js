// The audit log, for auditors: who did what to which device and when, filtered by person,
// device and time (GET /api/v1/audit). Read-only; nothing live.

import { clear, fmtDateTime, h } from "./dom.js";

export class AuditView {
  constructor({ root, api }) {
    this.root = root;
    this.api = api;
    this.form = root.querySelector("form");
    this.table = root.querySelector("tbody");
    this.status = root.querySelector(".audit-status");
    this.verifyStatus = root.querySelector(".audit-verify");
    root.querySelector("button.verify").addEventListener("click", () => this.verify());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.load();
    });
  }

  async load() {
    const data = new FormData(this.form);
    const iso = (v) => (v ? new Date(String(v)).toISOString() : null);
    const query = { actor: data.get("actor"), device_id: data.get("device_id"), action: data.get("action"),
                    start: iso(data.get("start")), end: iso(data.get("end")), limit: 500 };
    this.status.textContent = "Loading…";
    clear(this.table);
    let body;
    try {
      body = await this.api.get("/api/v1/audit", query);
    } catch (error) {
      this.status.textContent = error.status === 404
        ? "The audit log is not available on this server (GET /api/v1/audit answered 404)."
        : `Could not read the audit log: ${error.message}`;
      return;
    }
    const items = Array.isArray(body) ? body : body.items || [];
    this.status.textContent = `${items.length} entr${items.length === 1 ? "y" : "ies"}` +
      (items.length >= 500 ? " (the newest 500; narrow the filter to see older ones)" : "");
    for (const e of items) {
      this.table.append(h("tr", { dataset: { seq: e.seq } }, h("td", {}, e.seq ?? ""), h("td", {}, fmtDateTime(e.at)),
        h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.device_id || "—"),
        h("td", { class: "details" }, e.details ? JSON.stringify(e.details) : "")));
    }
  }

  // Walks the whole hash chain on the server: any entry changed, removed or reordered shows.
  async verify() {
    this.verifyStatus.textContent = "Verifying…";
    this.verifyStatus.className = "audit-verify";
    try {
      const r = await this.api.get("/api/v1/audit/verify");
      this.verifyStatus.textContent = r.ok
        ? `Chain intact: ${r.entries} entries, head #${r.head_seq} ${r.head_hash.slice(0, 16)}…`
        : `CHAIN BROKEN: ${r.problems.length} problem(s): ${r.problems.slice(0, 5).map((q) => `#${q.seq} ${q.kind}`).join(", ")}`;
      this.verifyStatus.classList.add(r.ok ? "ok" : "danger");
    } catch (error) {
      this.verifyStatus.textContent = `Could not verify: ${error.message}`;
    }
  }
}
