// The audit log, for auditors: who did what to which device and when, filtered by person,
// device, action, viewing session and time (GET /api/v1/audit). Read-only; nothing live.
// Times are in the force's time zone (forcetime.js); details are shown as fields.

import { clear, h } from "./dom.js";

// An entry's details as "name: value" fields (nested values as JSON).
function details(d) {
  if (!d || typeof d !== "object") return "";
  return h("dl", { class: "audit-details" }, ...Object.entries(d).flatMap(([k, v]) => [
    h("dt", {}, k.replaceAll("_", " ")),
    h("dd", {}, v === null ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v))]));
}

export class AuditView {
  constructor({ root, api, time }) {
    this.root = root;
    this.api = api;
    this.time = time;
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
    const iso = (v) => this.time.toUtc(v);
    const query = { actor: data.get("actor"), device_id: data.get("device_id"), action: data.get("action"),
                    session_id: data.get("session_id"), start: iso(data.get("start")), end: iso(data.get("end")),
                    limit: 500 };
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
      this.table.append(h("tr", { dataset: { seq: e.seq } }, h("td", {}, e.seq ?? ""),
        h("td", {}, this.time.format(e.at)), h("td", {}, e.actor), h("td", {}, e.action),
        h("td", {}, e.device_id || "—"), h("td", { class: "details" }, details(e.details))));
    }
  }

  // The filter for a viewing's entries (from the viewing record): by its viewer, device and
  // session, from a minute before it began until now. Showing the view then loads them.
  prefill({ actor, device_id, session_id, start }) {
    const set = (name, value) => { this.form.elements[name].value = value || ""; };
    set("actor", actor);
    set("device_id", device_id);
    set("action", "");
    set("session_id", session_id);
    set("start", this.time.toLocal(new Date(start).getTime() - 60_000));
    set("end", "");
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
