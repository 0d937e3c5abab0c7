// The alerts panel: open and acknowledged alerts, worst first. An alert that arrives live
// is highlighted (a pulsing border, the count in the top bar, an emergency banner) until
// someone acknowledges it or opens it. A new high or critical alert, and an escalation,
// also sound a tone, unless this user muted it; muting is shown on screen all the while,
// since a muted control room misses emergencies.
// A watch_me or emergency alert offers "Watch now" to those who watch video (video.js).
// When the list is long, alerts of one kind (or one unit, as the operator chooses) fold into
// a group with a count, opened on demand and acknowledged in one act; emergencies and
// escalated alerts never fold, so they stay in sight.
// The top-bar badge says one thing, the open count; new alerts make it flash, never change
// its words, so it does not read "3 new" and "12 open" in turns.

import { clear, fmtAgo, h, throttle } from "./dom.js";

const MAX_SHOWN = 200;
// Grouping starts when more alerts than this are shown, for groups of at least GROUP_MIN.
const GROUP_FROM = 8;
const GROUP_MIN = 2;
const GROUP_BY = {
  kind: (a) => `kind:${a.kind}`,
  unit: (a) => `unit:${a.device_id}`,
};
const WATCH_KINDS = new Set(["watch_me", "emergency"]);
const KIND_NAMES = {
  battery_low: "Battery low", battery_critical: "Battery critical", storage_full: "Storage nearly full",
  gps_lost: "GPS lost", offline: "Offline", emergency: "EMERGENCY", recording: "Recording started",
  watch_me: "Watch me", geofence: "Entered incident area", assigned_not_recording: "Assigned, NOT recording",
};

const LOUD = new Set(["high", "critical"]);

// Emergencies, critical and escalated alerts never fold into a group.
function foldable(a) {
  return a.kind !== "emergency" && a.severity !== "critical" && !a.escalated_at;
}

// A short two-tone alarm made with Web Audio: no sound file to fetch, nothing the CSP must allow.
function playTone(ctx) {
  const now = ctx.currentTime;
  for (const [i, freq] of [880, 660].entries()) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.25, now + i * 0.2);
    gain.gain.exponentialRampToValueAtTime(0.001, now + i * 0.2 + 0.18);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now + i * 0.2);
    osc.stop(now + i * 0.2 + 0.2);
  }
}

export class AlertsPanel {
  constructor({ root, badge, banner, store, api, canHandle, onLocate, resolveDialog, onWatch = null }) {
    this.root = root;
    this.list = root.querySelector(".alert-list");
    this.summary = root.querySelector(".alert-summary");
    this.showInfo = root.querySelector("input[name=show-info]");
    this.badge = badge;
    this.banner = banner;
    this.store = store;
    this.api = api;
    this.canHandle = canHandle;
    this.onLocate = onLocate;
    this.resolveDialog = resolveDialog;
    this.onWatch = onWatch; // (alert, kind name) -> opens a tile; null: this role watches no video
    this.unseen = new Set();
    // Open alerts ticked for "Acknowledge selected" (one POST /alerts/acknowledge, one audit entry).
    this.selected = new Set();
    this.bulk = h("button", { type: "button", class: "ack-selected", disabled: true,
      onclick: () => this.acknowledgeSelected() }, "Acknowledge selected");
    if (this.canHandle) this.summary.after(h("div", { class: "alert-bulk" }, this.bulk));
    // The mute is per user (this browser): a shared console keeps each operator's choice.
    this.muteKey = `watchfloor.alerts.muted.${(api.session && api.session.username) || ""}`;
    this.muted = localStorage.getItem(this.muteKey) === "1";
    this.sounds = 0;  // tones played: on the button, so that a test can see one was
    this.audio = null;
    this.mute = h("button", { type: "button", class: "sound", onclick: () => this.setMuted(!this.muted) });
    root.querySelector("header").append(this.mute);
    this.showMute();
    this.groupBy = root.querySelector("select[name=group-by]");
    this.expanded = new Set(); // group keys opened by the operator
    this.groupBy.addEventListener("change", () => this.draw());
    this.render = throttle(() => this.draw(), 250);
    this.showInfo.addEventListener("change", () => this.draw());
    store.subscribeAlerts((added) => {
      for (const a of added) {
        if (a.severity !== "info" || this.showInfo.checked) this.unseen.add(a.id);
      }
      if (added.some((a) => LOUD.has(a.severity) || a.escalated_at)) this.sound();
      this.render();
    });
    banner.addEventListener("click", () => {
      const a = this.store.alerts.get(Number(banner.dataset.alertId));
      if (a) this.locate(a);
    });
  }

  setMuted(muted) {
    this.muted = muted;
    localStorage.setItem(this.muteKey, muted ? "1" : "0");
    this.showMute();
  }

  showMute() {
    this.mute.textContent = this.muted ? "Sound MUTED" : "Sound on";
    this.mute.classList.toggle("muted", this.muted);
    this.mute.setAttribute("aria-pressed", String(this.muted));
    this.mute.title = this.muted ? "New high alerts and escalations make no sound: click to unmute"
      : "New high alerts and escalations sound a tone: click to mute";
    this.root.classList.toggle("sound-muted", this.muted);
  }

  sound() {
    if (this.muted) return;
    try {
      this.audio = this.audio || new AudioContext();
      playTone(this.audio);
    } catch (error) {
      return;  // no audio device: the flashing badge and banner still say it
    }
    this.sounds += 1;
    this.mute.dataset.sounds = String(this.sounds);
  }

  locate(alert) {
    this.unseen.delete(alert.id);
    this.onLocate(alert.device_id);
    this.render();
  }

  async act(alert, action) {
    try {
      if (action === "acknowledge") {
        const updated = await this.api.post(`/api/v1/alerts/${alert.id}/acknowledge`);
        this.store.mergeAlerts([updated], { fresh: false });
      } else {
        const answer = await this.resolveDialog.ask(alert);
        if (!answer) return;
        const updated = await this.api.post(`/api/v1/alerts/${alert.id}/resolve`, answer);
        this.store.mergeAlerts([updated], { fresh: false });
      }
      this.unseen.delete(alert.id);
    } catch (error) {
      this.summary.textContent = `Could not ${action} alert ${alert.id}: ${error.message}`;
      this.summary.classList.add("error");
      // The alert may have changed under us (409): re-read the truth.
      if (error.status === 409) this.refresh();
    }
    this.render();
  }

  acknowledgeSelected() {
    return this.acknowledgeMany([...this.selected], "the selected alerts");
  }

  // One POST /alerts/acknowledge (one audit entry) for a selection or a group.
  async acknowledgeMany(ids, what) {
    if (!ids.length) return;
    try {
      const done = await this.api.post("/api/v1/alerts/acknowledge", { ids });
      this.store.mergeAlerts(done.items, { fresh: false });
      for (const id of ids) {
        this.selected.delete(id);
        this.unseen.delete(id);
      }
      this.summary.textContent = `${done.count} acknowledged`;
    } catch (error) {
      this.summary.textContent = `Could not acknowledge ${what}: ${error.message}`;
      this.summary.classList.add("error");
      this.refresh();
      return;
    }
    this.render();
  }

  async refresh() {
    const items = [];
    for (const status of ["open", "acknowledged"]) {
      items.push(...(await this.api.get("/api/v1/alerts", { status, limit: 1000 })).items);
    }
    this.store.replaceAlerts(items);
  }

  draw() {
    const all = this.store.sortedAlerts();
    for (const id of this.unseen) {
      const a = this.store.alerts.get(id);
      if (!a || a.status !== "open") this.unseen.delete(id);
    }
    const shown = this.showInfo.checked ? all : all.filter((a) => a.severity !== "info");
    const open = all.filter((a) => a.status === "open").length;
    this.summary.classList.remove("error");
    this.summary.textContent = `${open} open, ${all.length - open} acknowledged` +
      (shown.length < all.length ? ` (${all.length - shown.length} info hidden)` : "");
    for (const id of this.selected) {
      const a = this.store.alerts.get(id);
      if (!a || a.status !== "open") this.selected.delete(id);
    }
    this.bulk.disabled = this.selected.size === 0;
    this.bulk.textContent = `Acknowledge selected${this.selected.size ? ` (${this.selected.size})` : ""}`;
    clear(this.list);
    const entries = this.entries(shown);
    for (const entry of entries.slice(0, MAX_SHOWN)) {
      this.list.append(entry.alert ? this.item(entry.alert, entry.inGroup) : this.group(entry));
    }
    if (entries.length > MAX_SHOWN) this.list.append(h("li", { class: "more" }, `and ${entries.length - MAX_SHOWN} more`));
    const fresh = this.unseen.size;
    this.badge.textContent = `${open} open`;
    this.badge.dataset.open = String(open);
    this.badge.title = fresh ? `${open} open alerts, ${fresh} not yet seen` : `${open} open alerts`;
    this.badge.classList.toggle("flash", fresh > 0);
    document.title = fresh ? `(${fresh}) new alert${fresh > 1 ? "s" : ""} — Watchfloor` : "Watchfloor — control room";
    this.root.classList.toggle("attention", fresh > 0);
    const emergency = all.find((a) => a.kind === "emergency" && a.status === "open");
    this.banner.classList.toggle("hidden", !emergency);
    if (emergency) {
      this.banner.dataset.alertId = emergency.id;
      this.banner.textContent = `EMERGENCY — ${emergency.callsign || emergency.device_id} (${emergency.borough || "?"}):` +
        ` ${emergency.detail}. Click to locate.`;
    }
  }

  // The list in order, worst first: single alerts, and groups placed where their worst alert
  // would be. Flat when the list is short or the operator chose no grouping.
  entries(shown) {
    const keyOf = GROUP_BY[this.groupBy.value];
    if (!keyOf || shown.length <= GROUP_FROM) return shown.map((alert) => ({ alert }));
    const groups = new Map();
    for (const a of shown) {
      if (!foldable(a)) continue;
      const key = keyOf(a);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(a);
    }
    const out = [];
    const placed = new Set();
    for (const a of shown) {
      const members = foldable(a) ? groups.get(keyOf(a)) : null;
      if (!members || members.length < GROUP_MIN) out.push({ alert: a });
      else {
        const key = keyOf(a);
        if (placed.has(key)) continue;
        placed.add(key);
        out.push({ key, members });
        if (this.expanded.has(key)) out.push(...members.map((alert) => ({ alert, inGroup: true })));
      }
    }
    return out;
  }

  group({ key, members }) {
    const first = members[0];
    const open = members.filter((a) => a.status === "open");
    const opened = this.expanded.has(key);
    const title = key.startsWith("kind:") ? KIND_NAMES[first.kind] || first.kind
      : `${first.callsign || first.device_id}${first.borough ? ` · ${first.borough}` : ""}`;
    const fresh = members.some((a) => this.unseen.has(a.id));
    return h("li", {
      class: `alert alert-group sev-${first.severity}${open.length ? " st-open" : " st-acknowledged"}${fresh ? " new" : ""}`,
      dataset: { group: key },
    },
    h("div", { class: "alert-head" },
      h("button", { type: "button", class: "expand", "aria-expanded": String(opened),
        onclick: () => {
          if (opened) this.expanded.delete(key); else this.expanded.add(key);
          this.draw();
        } }, opened ? "▾" : "▸"),
      h("span", { class: "sev" }, first.severity),
      h("strong", {}, title),
      h("span", { class: "count" }, `${members.length} alerts`),
      h("span", { class: "muted" }, `${open.length} open`)),
    this.canHandle && open.length ? h("div", { class: "alert-actions" },
      h("button", { type: "button", class: "ack-group", onclick: () => this.acknowledgeMany(open.map((a) => a.id), title) },
        `Acknowledge ${open.length}`)) : null);
  }

  item(a, inGroup = false) {
    const handle = this.canHandle;
    return h("li", {
      class: `alert sev-${a.severity} st-${a.status}${a.escalated_at ? " escalated" : ""}` +
        `${this.unseen.has(a.id) ? " new" : ""}${inGroup ? " in-group" : ""}`,
      dataset: { alertId: a.id, deviceId: a.device_id, kind: a.kind },
    },
    h("div", { class: "alert-head" },
      handle && a.status === "open" ? h("input", {
        type: "checkbox", class: "select", "aria-label": "select for acknowledge", checked: this.selected.has(a.id),
        onchange: (e) => {
          if (e.target.checked) this.selected.add(a.id); else this.selected.delete(a.id);
          this.render();
        },
      }) : null,
      h("span", { class: "sev" }, a.severity),
      a.escalated_at ? h("span", { class: "escalation", title: `escalated ${fmtAgo(a.escalated_at)}` },
        `Escalated to supervisor${a.escalation_level > 1 ? ` (level ${a.escalation_level})` : ""}`) : null,
      h("strong", {}, KIND_NAMES[a.kind] || a.kind),
      h("button", { class: "link", type: "button", onclick: () => this.locate(a) }, a.callsign || a.device_id),
      // Who carried the camera when it was raised (custody), which may not be who has it now.
      a.officer ? h("span", { class: "officer", title: "carrying the camera when the alert was raised" }, a.officer)
        : null,
      h("span", { class: "muted" }, a.borough || "")),
    h("div", { class: "alert-detail" }, a.detail, " · ", fmtAgo(a.raised_at),
      a.status === "acknowledged" ? ` · acknowledged by ${a.acknowledged_by}` : ""),
    handle ? h("div", { class: "alert-actions" },
      a.status === "open" ? h("button", { type: "button", class: "ack", onclick: () => this.act(a, "acknowledge") },
        "Acknowledge") : null,
      h("button", { type: "button", class: "resolve", onclick: () => this.act(a, "resolve") }, "Resolve…"),
      this.onWatch && WATCH_KINDS.has(a.kind) ? h("button", {
        type: "button", class: "watch-now", onclick: () => this.onWatch(a, KIND_NAMES[a.kind] || a.kind),
      }, "Watch now") : null) : null);
  }
}

// The resolve dialog: an outcome and a note, asked before an alert is closed.
export class ResolveDialog {
  constructor(dialog) {
    this.dialog = dialog;
  }

  ask(alert) {
    const d = this.dialog;
    d.querySelector(".what").textContent = `${KIND_NAMES[alert.kind] || alert.kind} — ${alert.callsign || alert.device_id}`;
    d.querySelector("textarea").value = "";
    d.querySelector("select").value = "resolved";
    d.showModal();
    return new Promise((resolve) => {
      d.addEventListener("close", () => {
        if (d.returnValue !== "ok") return resolve(null);
        const note = d.querySelector("textarea").value.trim();
        resolve({ outcome: d.querySelector("select").value, note: note || null });
      }, { once: true });
    });
  }
}
