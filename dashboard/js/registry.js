// The device registry, for admins: find a device, register or change one, retire one.

import { clear, fmtAgo, h } from "./dom.js";

const PAGE = 100;

export class RegistryView {
  constructor({ root, api, onChanged }) {
    this.root = root;
    this.api = api;
    this.onChanged = onChanged;
    this.search = root.querySelector("input[name=registry-q]");
    this.table = root.querySelector("tbody");
    this.status = root.querySelector(".registry-status");
    this.form = root.querySelector("form.device-form");
    this.offset = 0;
    this.editing = null; // the id picked with "Edit": saving it changes that device
    root.querySelector("form.registry-search").addEventListener("submit", (e) => {
      e.preventDefault();
      this.offset = 0;
      this.load();
    });
    root.querySelector("button.prev").addEventListener("click", () => { this.offset = Math.max(0, this.offset - PAGE); this.load(); });
    root.querySelector("button.next").addEventListener("click", () => { this.offset += PAGE; this.load(); });
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
  }

  async load() {
    try {
      const page = await this.api.get("/api/v1/devices", { q: this.search.value.trim(), limit: PAGE, offset: this.offset,
                                                           include_retired: true });
      this.status.textContent = `${page.total} devices; showing ${page.total ? this.offset + 1 : 0}–${this.offset + page.items.length}`;
      clear(this.table).append(...page.items.map((d) => h("tr", { class: d.retired_at ? "retired" : "" },
        h("td", {}, d.device_id), h("td", {}, d.callsign || "—"), h("td", {}, d.officer || "—"),
        h("td", {}, d.borough || "—"), h("td", {}, d.role || "—"), h("td", {}, d.retired_at ? "retired" : d.state || "—"),
        h("td", {}, fmtAgo(d.received_at)),
        h("td", {}, h("button", { type: "button", class: "small", onclick: () => this.edit(d) }, "Edit"),
          d.retired_at
            ? h("button", { type: "button", class: "small", onclick: () => this.reactivate(d) }, "Reactivate")
            : h("button", { type: "button", class: "small danger", onclick: () => this.retire(d) }, "Retire")))));
    } catch (error) {
      this.status.textContent = error.message;
    }
  }

  edit(d) {
    this.editing = d.device_id;
    for (const name of ["device_id", "callsign", "officer", "borough", "role"]) this.form.elements[name].value = d[name] || "";
    this.form.elements.device_id.focus();
  }

  async save() {
    const data = Object.fromEntries(new FormData(this.form).entries());
    for (const k of Object.keys(data)) if (data[k] === "") data[k] = null;
    // A device picked with "Edit" is changed (PUT); any other id is registered anew (POST,
    // which answers 409 for an id already taken rather than overwriting it).
    const existing = this.editing && this.editing === data.device_id;
    try {
      const saved = existing
        ? await this.api.put(`/api/v1/devices/${encodeURIComponent(data.device_id)}`, data)
        : await this.api.post("/api/v1/devices", data);
      this.editing = null;
      this.form.reset();
      this.onChanged();
      await this.load();  // it rewrites the status line: say what was saved after it
      this.status.textContent = `Saved ${saved.device_id}. ${this.status.textContent}`;
    } catch (error) {
      this.status.textContent = `Not saved: ${error.message}`;
    }
  }

  async reactivate(d) {
    if (!confirm(`Reactivate ${d.device_id}? It rejoins the live picture; it connects again once provisioned with a new secret.`)) return;
    try {
      await this.api.post(`/api/v1/devices/${encodeURIComponent(d.device_id)}/reactivate`);
      this.load();
      this.onChanged();
    } catch (error) {
      this.status.textContent = error.message;
    }
  }

  async retire(d) {
    if (!confirm(`Retire ${d.device_id} (${d.callsign || "no callsign"})? It leaves the live picture.`)) return;
    try {
      await this.api.post(`/api/v1/devices/${encodeURIComponent(d.device_id)}/retire`);
      this.load();
      this.onChanged();
    } catch (error) {
      this.status.textContent = error.message;
    }
  }
}
