// The force's alert policy, for admins: what each kind of alert does, for any role and for
// the roles with a rule of their own, and what it does for a unit assigned to an open
// incident. Every change is saved at once (PUT /api/v1/alert-policy/{kind}/{role}), audited,
// and applied by every ingest worker before its next batch; only an admin of every area may
// change it (the API says so otherwise, shown in the status line). An offline rule also says
// how long a unit of its role may be quiet ("after", seconds; empty: the service's default),
// kept when only its outcome changes.

import { clear, h } from "./dom.js";

const KIND_NAMES = {
  emergency: "Emergency", recording: "Recording started", watch_me: "Watch me", geofence: "Entered an incident's area",
  battery_critical: "Battery critical", battery_low: "Battery low", storage_full: "Storage full",
  gps_lost: "GPS lost", offline: "Offline", assigned_not_recording: "Assigned, not recording",
};
const OUTCOMES = ["critical", "high", "warning", "info", "activity", "off"];
const OUTCOME_NAMES = { activity: "activity only" };

export class PolicyView {
  constructor({ root, api }) {
    this.root = root;
    this.api = api;
    this.table = root.querySelector("tbody");
    this.status = root.querySelector(".policy-status");
    this.form = root.querySelector(".policy-form");
    this.policy = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(this.form);
      this.save(data.get("kind"), data.get("role"), data.get("outcome"), data.get("assigned_outcome") || null);
    });
  }

  async load() {
    try {
      this.show(await this.api.get("/api/v1/alert-policy"));
      this.status.textContent = `Policy ${this.policy.version}`;
    } catch (error) {
      this.status.textContent = error.message;
    }
  }

  outcomeOptions(kind, value, same) {
    // A state (battery, offline…) has no moment to record: a severity or off only.
    const allowed = OUTCOMES.filter((o) => o !== "activity" || !this.policy.state_kinds.includes(kind));
    const options = allowed.map((o) => h("option", { value: o, selected: o === value }, OUTCOME_NAMES[o] || o));
    if (same) options.unshift(h("option", { value: "", selected: !value }, "the same"));
    return options;
  }

  outcomeSelect(kind, value, { name, same = false, onchange } = {}) {
    return h("select", { name, "aria-label": name, onchange }, this.outcomeOptions(kind, value, same));
  }

  show(policy) {
    this.policy = policy;
    clear(this.table).append(...policy.rules.map((rule) => {
      let outcome = rule.outcome;
      let assigned = rule.assigned_outcome;
      let after = rule.after_s;
      const put = () => this.save(rule.kind, rule.role, outcome, assigned, after);
      return h("tr", { dataset: { kind: rule.kind, role: rule.role } },
        h("td", {}, KIND_NAMES[rule.kind] || rule.kind),
        h("td", {}, rule.role === "*" ? "any role" : rule.role),
        h("td", {}, this.outcomeSelect(rule.kind, rule.outcome, {
          name: "outcome", onchange: (e) => { outcome = e.target.value; put(); } })),
        h("td", {}, this.outcomeSelect(rule.kind, rule.assigned_outcome, {
          name: "assigned_outcome", same: true, onchange: (e) => { assigned = e.target.value || null; put(); } })),
        h("td", {}, policy.timed_kinds.includes(rule.kind) ? h("input", {
          name: "after_s", type: "number", min: 5, max: 86400, step: 1, class: "after", "aria-label": "after (seconds)",
          value: rule.after_s ?? "", placeholder: `${policy.offline_after_s}`,
          onchange: (e) => { after = e.target.value === "" ? null : Number(e.target.value); put(); } }) : ""),
        h("td", {}, rule.role === "*" ? "" : h("button", { type: "button", class: "small", onclick: () => this.remove(rule) },
          "Remove")));
    }));
    const kinds = this.form.querySelector("select[name=kind]");
    if (!kinds.options.length) {
      kinds.append(...policy.kinds.map((k) => h("option", { value: k }, KIND_NAMES[k] || k)));
      this.form.querySelector("select[name=role]").append(...policy.roles.map((r) => h("option", { value: r }, r)));
      kinds.addEventListener("change", () => this.formOutcomes());
      this.formOutcomes();
    }
  }

  formOutcomes() {
    // The form offers only what the chosen kind may take, as the rows do.
    const kind = this.form.querySelector("select[name=kind]").value;
    for (const [name, same] of [["outcome", false], ["assigned_outcome", true]]) {
      const select = this.form.querySelector(`select[name=${name}]`);
      const options = this.outcomeOptions(kind, select.value, same);
      const chosen = options.find((o) => o.value === select.value) || options[0];
      clear(select).append(...options);
      select.value = chosen.value;
    }
  }

  async save(kind, role, outcome, assigned, after = null) {
    const who = role === "*" ? "any role" : role;
    try {
      this.show(await this.api.put(`/api/v1/alert-policy/${encodeURIComponent(kind)}/${encodeURIComponent(role)}`,
        { outcome, assigned_outcome: assigned, after_s: after }));
      const wait = after === null ? "" : `, after ${after} s`;
      this.status.textContent = `Saved: ${KIND_NAMES[kind] || kind} for ${who} is ${OUTCOME_NAMES[outcome] || outcome}`
        + `${wait} (policy ${this.policy.version}).`;
    } catch (error) {
      this.status.textContent = `Not saved: ${error.message}`;
      if (this.policy) this.show(this.policy); // the selects back to what is in force
    }
  }

  async remove(rule) {
    try {
      this.show(await this.api.request("DELETE",
        `/api/v1/alert-policy/${encodeURIComponent(rule.kind)}/${encodeURIComponent(rule.role)}`));
      this.status.textContent = `Removed: ${rule.role} follows the rule for any role on ${KIND_NAMES[rule.kind] || rule.kind}`
        + ` (policy ${this.policy.version}).`;
    } catch (error) {
      this.status.textContent = `Not removed: ${error.message}`;
    }
  }
}
