// Local users, for admins: who they are, and a Disable button (which ends their tokens on
// every API process within seconds, and is in the audit log). An area-limited admin sees
// only the users whose boroughs are all within theirs.

import { clear, h } from "./dom.js";

export class UsersView {
  constructor({ root, api }) {
    this.root = root;
    this.api = api;
    this.table = root.querySelector("tbody");
    this.status = root.querySelector(".users-status");
  }

  async load() {
    try {
      const users = await this.api.get("/api/v1/users");
      this.status.textContent = `${users.length} users`;
      clear(this.table).append(...users.map((u) => h("tr", { class: u.disabled ? "retired" : "" },
        h("td", {}, u.username), h("td", {}, u.display_name || "—"), h("td", {}, u.role.replaceAll("_", " ")),
        h("td", {}, u.areas.includes("*") ? "all boroughs" : u.areas.join(", ")),
        h("td", {}, u.disabled ? "disabled" : "enabled"),
        h("td", {}, u.disabled ? "" : h("button", { type: "button", class: "small danger", onclick: () => this.disable(u) },
          "Disable")))));
    } catch (error) {
      this.status.textContent = error.message;
    }
  }

  async disable(u) {
    if (!confirm(`Disable ${u.username}? They can no longer sign in, and are signed out everywhere.`)) return;
    try {
      await this.api.post(`/api/v1/users/${encodeURIComponent(u.username)}/disable`);
      await this.load();
      this.status.textContent = `Disabled ${u.username}. ${this.status.textContent}`;
    } catch (error) {
      this.status.textContent = `Not disabled: ${error.message}`;
    }
  }
}
