// Replay: every unit in an incident's area (or a borough and window) moving on the map with a
// time slider, played at 1x, 10x or 60x, and the timeline beside it (alerts, events, viewing
// sessions, each with the officer who carried the camera then); clicking an entry jumps there.
// The frames come a page at a time, one request for every unit: a small first page drawn as soon
// as it arrives (for an area and window given, without waiting for the plan: units and
// timeline), the rest loaded behind it (docs/api.md, "Replay and disclosure").

import { clear, h, show } from "./dom.js";

// Slices a window is cut into (at least 1 s each), and slices per request (the API's limit is 600).
const SLICES = 1200;
const PAGE = 300;
// The first page is small, so the first frame is drawn after one quick query.
const FIRST_PAGE = 20;
const TICK_MS = 100;

function stepFor(span) {
  return Math.max(1000, Math.ceil(span / SLICES / 1000) * 1000);
}

// A path with its query; a list (a bbox) as the parameter repeated.
function withQuery(path, query) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query)) {
    if (v === null || v === undefined || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, item);
  }
  return url.pathname + url.search;
}

export class ReplayView {
  constructor({ root, api, map, time }) {
    this.root = root;
    this.api = api;
    this.map = map;
    this.time = time;
    this.plan = null;
    this.loadId = 0; // a newer replay makes the pages of an older one land nowhere
    this.frames = []; // per slice: [[unit, t_ms, lat, lon, recording, officer]]
    this.units = []; // [device_id, callsign, borough, role]
    this.officers = [];
    this.states = [];
    this.start = 0; // the window's start, ms since the epoch
    this.step = 1000;
    this.span = 0;
    this.at = 0;
    this.speed = 1;
    this.timer = null;
    this.firstFrameAt = null;
    this.status = root.querySelector(".replay-status");
    this.slider = root.querySelector("input[name=replay-time]");
    this.clock = root.querySelector(".replay-clock");
    this.list = root.querySelector(".replay-timeline");
    this.playButton = root.querySelector("button.replay-play");
    this.slider.addEventListener("input", () => this.seek(Number(this.slider.value)));
    this.playButton.addEventListener("click", () => (this.timer ? this.pause() : this.play()));
    for (const b of root.querySelectorAll("button.speed")) {
      b.addEventListener("click", () => this.setSpeed(Number(b.dataset.speed)));
    }
    root.querySelector("button.close").addEventListener("click", () => this.close());
    const form = root.querySelector("form.replay-area");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      this.openArea({ borough: data.get("borough") || null, start: this.time.toUtc(data.get("start")),
        end: this.time.toUtc(data.get("end")) });
    });
  }

  setBoroughs(names) {
    this.root.querySelector("form.replay-area select[name=borough]").append(...names.map((n) => h("option", { value: n }, n)));
  }

  showForm() {
    show(this.root, true);
    const form = this.root.querySelector("form.replay-area");
    if (!form.start.value) {
      const now = Date.now();
      form.start.value = this.time.toLocal(now - 3600 * 1000).slice(0, 16);
      form.end.value = this.time.toLocal(now).slice(0, 16);
    }
    form.closest("details").open = true;
  }

  openIncident(id) {
    return this.open(`/api/v1/incidents/${id}/replay`, {}, `Incident #${id}`);
  }

  // An area known beforehand (a borough or a box, and a window): its first page of frames is
  // asked for at once, beside the plan, rather than after it.
  openArea({ borough = null, bbox = null, start, end }) {
    const area = bbox ? { bbox } : { borough };
    return this.open("/api/v1/replay", { borough, bbox, start, end }, borough || (bbox ? "the box" : "your boroughs"),
      { area, start: Date.parse(start), end: Date.parse(end) });
  }

  async open(path, query, title, known = null) {
    this.pause();
    const id = ++this.loadId;
    this.firstFrameAt = null; // performance.now() when the first frame was drawn (bench/replay.py)
    this.plan = null;
    show(this.root, true);
    this.root.querySelector("h2").textContent = `Replay: ${title}`;
    this.status.textContent = "Loading…";
    clear(this.list);
    const planned = this.api.get(withQuery(path, query));
    planned.catch(() => null); // reported where it is awaited
    let from = 0;
    if (known) {
      // The first frame from the first page, without waiting for the plan (units, timeline).
      this.window(known.start, known.end);
      try {
        const page = await this.pageOf(0, FIRST_PAGE, known.area);
        if (id !== this.loadId) return;
        this.merge(page, 0);
      } catch (error) {
        this.status.textContent = error.message;
        return;
      }
      this.drawFirst(id);
      from = FIRST_PAGE;
    }
    let plan;
    try {
      plan = await planned;
    } catch (error) {
      this.status.textContent = error.message;
      return;
    }
    if (id !== this.loadId) return;
    this.plan = plan;
    if (!known) this.window(Date.parse(plan.start), Date.parse(plan.end));
    this.drawTimeline();
    this.status.textContent = `${plan.units.length} units · ${this.time.format(plan.start)} to ${this.time.format(plan.end)}`;
    // A small first page (drawn at once), then the rest in order.
    const area = plan.bbox ? { bbox: plan.bbox } : { borough: plan.borough };
    for (let to = from + (from ? PAGE : FIRST_PAGE); from < this.frames.length && id === this.loadId;
      from = to, to += PAGE) {
      to = Math.min(this.frames.length, to);
      try {
        const page = await this.pageOf(from, to, area);
        if (id !== this.loadId) return;
        this.merge(page, from);
      } catch (error) {
        this.status.textContent = error.message;
        return;
      }
      if (from === 0) this.drawFirst(id);
    }
  }

  // The window [start, end) (ms since the epoch), its slices empty.
  window(start, end) {
    this.start = start;
    this.span = end - start;
    this.step = stepFor(this.span);
    this.frames = Array.from({ length: Math.ceil(this.span / this.step) }, () => []);
    this.units = [];
    this.unitIndex = new Map();
    this.officers = [];
    this.slider.max = String(this.span);
    this.slider.step = String(this.step);
    this.seek(0);
  }

  drawFirst(id) {
    this.seek(this.at);
    // After the map's own frame callback (queued by seek): the first frame is on screen.
    requestAnimationFrame(() => { if (id === this.loadId) this.firstFrameAt = performance.now(); });
  }

  pageOf(from, to, area) {
    return this.api.get(withQuery("/api/v1/replay/frames", {
      start: new Date(this.start + from * this.step).toISOString(),
      end: new Date(this.start + Math.min(to * this.step, this.span)).toISOString(),
      step_s: this.step / 1000, borough: area.borough, bbox: area.bbox }));
  }

  // A page's points into the window's slices, its unit and officer indexes made the window's.
  merge(page, from) {
    const units = page.units.map((u) => {
      if (!this.unitIndex.has(u[0])) {
        this.unitIndex.set(u[0], this.units.length);
        this.units.push(u);
      }
      return this.unitIndex.get(u[0]);
    });
    const officers = page.officers.map((o) => this.officers.push(o) - 1);
    const offset = from * this.step;
    for (const [k, unit, tMs, lat, lon, , rec, officer] of page.points) {
      this.frames[from + k].push([units[unit], offset + tMs, lat, lon, page.recording_states[rec],
        officer < 0 ? -1 : officers[officer]]);
    }
  }

  // Each unit's latest point at or before ``at`` (ms into the window), a few minutes back at most.
  seek(at) {
    this.at = Math.max(0, Math.min(at, this.span));
    this.slider.value = String(this.at);
    const last = Math.min(this.frames.length - 1, Math.floor(this.at / this.step));
    const seen = new Map();
    for (let k = last; k >= 0 && k > last - 300 / (this.step / 1000); k--) {
      for (const p of this.frames[k]) {
        if (p[1] <= this.at && !seen.has(p[0])) seen.set(p[0], p);
      }
    }
    // A slice holds each unit's latest fix in it, so at a slice's start (the window's first
    // frame above all) a unit's only fix can lie a moment ahead: it is drawn at that first
    // known position rather than left off the map until the clock passes it.
    for (const p of this.frames[last] || []) {
      if (!seen.has(p[0])) seen.set(p[0], p);
    }
    this.map.replay = [...seen.values()].map(([unit, , lat, lon, recording, officer]) => {
      const [deviceId, callsign] = this.units[unit];
      const who = officer >= 0 ? this.officers[officer] : null;
      return { device_id: deviceId, lat, lon, recording,
        label: `${(who && who[1]) || callsign || deviceId}${who ? ` · ${who[0]}` : ""}` };
    });
    this.map.invalidate();
    this.clock.textContent = this.time.format(this.start + this.at);
  }

  setSpeed(speed) {
    this.speed = speed;
    for (const b of this.root.querySelectorAll("button.speed")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.speed) === speed));
    }
  }

  play() {
    if (!this.span) return;
    if (this.at >= this.span) this.seek(0);
    this.playButton.textContent = "Pause";
    let before = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      this.seek(this.at + (now - before) * this.speed);
      before = now;
      if (this.at >= this.span) this.pause();
    }, TICK_MS);
  }

  pause() {
    clearInterval(this.timer);
    this.timer = null;
    this.playButton.textContent = "Play";
  }

  drawTimeline() {
    const cols = this.plan.timeline_columns;
    const start = this.start;
    clear(this.list).append(...this.plan.timeline.map((row) => {
      const e = Object.fromEntries(cols.map((c, i) => [c, row[i]]));
      const who = e.officer ? ` · ${e.callsign || ""} ${e.officer}` : "";
      const text = e.kind === "viewing" ? `viewed by ${e.what}` : e.what.replaceAll("_", " ");
      return h("li", { class: `replay-entry kind-${e.kind}` },
        h("button", { type: "button", class: "link", onclick: () => this.jump(Date.parse(e.at) - start, e.device_id) },
          `${this.time.format(e.at).slice(11, 19)} ${e.device_id}: ${text}`),
        h("span", { class: "muted" }, who));
    }));
    if (!this.plan.timeline.length) this.list.append(h("li", { class: "muted" }, "Nothing on the timeline."));
    if (this.plan.timeline_truncated) this.list.append(h("li", { class: "muted" }, "Only the first entries are shown."));
  }

  // To an entry's moment, with its unit in the middle of the map once it has a position.
  jump(at, deviceId) {
    this.pause();
    this.seek(at);
    const unit = (this.map.replay || []).find((u) => u.device_id === deviceId);
    if (unit) this.map.centreOn(unit.lat, unit.lon);
  }

  close() {
    this.pause();
    this.loadId++;
    this.plan = null;
    this.map.replay = null;
    this.map.invalidate();
    show(this.root, false);
  }
}
