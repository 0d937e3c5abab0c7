// The control-room page: sign in, then the views the user's role calls for.
//   operator            live map, alerts, unit panel, live video
//   firearms_commander  the same, with the incident panel first
//   fleet_manager       fleet health (no positions, no video)
//   auditor             the audit log, the viewing record, the incident record (export for disclosure)
//   admin               map (from REST, admins are not on the live feed), fleet health, registry, users,
//                       the viewing record, the incident record, the alert policy

import { AlertsPanel, ResolveDialog } from "./alerts.js";
import { Api } from "./api.js";
import { AuditView } from "./audit.js";
import { $, clear, fmtAgo, fmtPct, h, show } from "./dom.js";
import { FleetView } from "./fleet.js";
import { ForceTime } from "./forcetime.js";
import { IncidentPanel } from "./incidents.js";
import { IncidentRecordView } from "./incidentrecord.js";
import { ReplayView } from "./replay.js";
import { LiveFeed } from "./live.js";
import { MapView } from "./map.js";
import { PolicyView } from "./policy.js";
import { RegistryView } from "./registry.js";
import { UnitFilter, UnitStore } from "./store.js";
import { UnitPanel } from "./unitpanel.js";
import { UsersView } from "./users.js";
import { VideoTiles } from "./video.js";
import { ViewingsView } from "./viewings.js";

const ROLE_VIEWS = {
  operator: ["map"],
  firearms_commander: ["map"],
  fleet_manager: ["fleet"],
  auditor: ["audit", "viewings", "incidents"],
  admin: ["map", "fleet", "registry", "users", "viewings", "incidents", "policy"],
};
const VIEW_NAMES = { map: "Live map", fleet: "Fleet health", audit: "Audit log", viewings: "Viewing record",
                     incidents: "Incidents", registry: "Registry", users: "Users", policy: "Alert policy" };
const ON_LIVE_FEED = new Set(["operator", "firearms_commander", "fleet_manager"]);
const WATCHES_VIDEO = new Set(["operator", "firearms_commander"]);
const HANDLES_ALERTS = new Set(["operator", "firearms_commander"]);
// Replay shows where officers were (docs/api.md); auditors have no map and use the API.
const REPLAYS = new Set(["operator", "firearms_commander", "admin"]);
const ADMIN_REFRESH_MS = 30000;
const FEED_DOWN = new Set(["disconnected", "reconnecting", "refused"]);
const NOTICE_KEY = "watchfloor.notice";
const LARGE_KEY = "watchfloor.large-type";

// Exposed for the browser tests and the benchmark: timings and a frame counter, nothing else.
const probe = { perf: { snapshotAt: null, firstDrawAt: null, firstDrawUnits: 0, snapshots: 0, deltas: 0, deltaUnits: 0 },
                map: null };
window.__watchfloor = probe;

const api = new Api({ onUnauthenticated: (message) => signOut(message) });

// ``revoke``: the user chose to sign out, so the API ends their tokens everywhere (not only
// this tab's copy); otherwise the session has already ended at the API.
async function signOut(message = "", { revoke = false } = {}) {
  if (revoke) await api.revoke();
  api.signOut();
  if (message) sessionStorage.setItem(NOTICE_KEY, message);
  location.reload(); // the simplest way to drop every timer, socket and peer connection
}

function showSignIn() {
  show($("#signin"), true);
  show($("#app"), false);
  const notice = sessionStorage.getItem(NOTICE_KEY);
  sessionStorage.removeItem(NOTICE_KEY);
  if (notice) $("#signin-error").textContent = notice;
  const form = $("#signin-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    $("#signin-error").textContent = "";
    form.querySelector("button").disabled = true;
    try {
      await api.signIn(String(data.get("username")), String(data.get("password")));
      form.reset();
      await startSession();
    } catch (error) {
      $("#signin-error").textContent = error.message;
    } finally {
      form.querySelector("button").disabled = false;
    }
  });
  $("input[name=username]", form).focus();
}

function setLargeType(on) {
  document.body.classList.toggle("large", on);
  $("#large-type").setAttribute("aria-pressed", String(on));
  localStorage.setItem(LARGE_KEY, on ? "1" : "0");
}

async function startSession() {
  const s = api.session;
  show($("#signin"), false);
  show($("#app"), true);
  const role = s.role;
  document.body.dataset.role = role;
  $("#who").textContent = `${s.username} · ${role.replaceAll("_", " ")} · ${s.areas.includes("*") ? "all boroughs" : s.areas.join(", ")}`;
  $("#sign-out").addEventListener("click", () => signOut("", { revoke: true }));
  $("#large-type").addEventListener("click", () => {
    setLargeType(!document.body.classList.contains("large"));
    if (probe.map) {
      probe.map.large = document.body.classList.contains("large");
      probe.map.invalidate({ base: true, units: true });
    }
  });
  setLargeType(localStorage.getItem(LARGE_KEY) === "1");

  const store = new UnitStore();
  const views = ROLE_VIEWS[role] || [];
  // staleSince: while the live feed is down, when its last frame came (null while live).
  const ctx = { api, store, role, views, lastFrameAt: null, staleSince: null, staleTimer: null };
  // The feed first: the snapshot (the biggest wait) is on its way while the views are built;
  // the store holds it until they draw.
  if (ON_LIVE_FEED.has(role)) startFeed(ctx);
  const config = await (await fetch("/dashboard/config.json")).json();
  ctx.config = config;
  $("#attribution").textContent = [config.tiles ? config.tiles.attribution : "", config.boroughs_attribution,
    config.tube_attribution]
    .filter(Boolean).join(" · ");

  const time = new ForceTime(config.time_zone);
  ctx.time = time;
  if (views.includes("map")) await setUpMap(ctx);
  if (views.includes("fleet")) {
    ctx.fleet = new FleetView({ root: $("#view-fleet"), api, store });
  }
  if (views.includes("audit")) ctx.audit = new AuditView({ root: $("#view-audit"), api, time });
  // A viewing links to its audit entries where the role has the audit view (auditors).
  const onAudit = ctx.audit ? (filter) => { ctx.audit.prefill(filter); $("#tabs button[data-view=audit]").click(); }
    : null;
  if (views.includes("viewings")) ctx.viewings = new ViewingsView({ root: $("#view-viewings"), api, time, onAudit });
  if (views.includes("incidents")) ctx.record = new IncidentRecordView({ root: $("#view-incidents"), api, time });
  if (views.includes("registry")) {
    ctx.registry = new RegistryView({ root: $("#view-registry"), api, onChanged: () => loadFromRest(ctx) });
  }
  if (views.includes("users")) ctx.users = new UsersView({ root: $("#view-users"), api });
  if (views.includes("policy")) ctx.policy = new PolicyView({ root: $("#view-policy"), api });
  if (ctx.fleet || ctx.record) {
    const names = ctx.boroughNames || fetch(config.boroughs_url).then((r) => r.json())
      .then((geo) => geo.features.map((f) => f.properties.name).sort());
    names.then((list) => {
      if (ctx.fleet) ctx.fleet.setBoroughs(list);
      if (ctx.record) ctx.record.setBoroughs(list);
    });
  }
  setUpTabs(ctx);

  if (ON_LIVE_FEED.has(role)) {
    if (ctx.alerts) ctx.alerts.render(); // alerts of a snapshot that came before the panel
  } else if (views.includes("map") || views.includes("fleet")) {
    setConnection("polling", "Updated from the API every 30 s (admins are not on the live feed)");
    await loadFromRest(ctx);
    setInterval(() => loadFromRest(ctx), ADMIN_REFRESH_MS);
  } else setConnection("idle", "");
}

function setUpTabs(ctx) {
  const nav = clear($("#tabs"));
  const choose = (name) => {
    for (const v of Object.keys(VIEW_NAMES)) show($(`#view-${v}`), v === name);
    for (const b of nav.querySelectorAll("button")) b.setAttribute("aria-current", String(b.dataset.view === name));
    if (name === "map" && ctx.map) ctx.map.resize();
    if (name === "fleet") ctx.fleet.start();
    if (name === "audit") ctx.audit.load();
    if (name === "viewings") ctx.viewings.load();
    if (name === "incidents") ctx.record.load();
    if (name === "registry") ctx.registry.load();
    if (name === "users") ctx.users.load();
    if (name === "policy") ctx.policy.load();
  };
  if (ctx.views.length > 1) {
    for (const v of ctx.views) nav.append(h("button", { type: "button", dataset: { view: v }, onclick: () => choose(v) }, VIEW_NAMES[v]));
  }
  choose(ctx.views[0]);
}

async function setUpMap(ctx) {
  const { api, store, config, role } = ctx;
  const filter = new UnitFilter();
  const map = new MapView({ container: $("#map"), store, filter, config, onSelect: (id) => panel.open(id) });
  probe.map = map;
  map.large = document.body.classList.contains("large");
  ctx.map = map;
  // Not awaited: the live feed starts while the outlines load (the map draws units without them).
  ctx.boroughNames = map.loadBoroughs(config.boroughs_url).then((names) => {
    $("#filter-borough").append(...names.map((n) => h("option", { value: n }, n)));
    if (ctx.incidents) ctx.incidents.setBoroughs(names);
    if (ctx.replay) ctx.replay.setBoroughs(names);
    return names;
  });

  map.loadTube(config.tube_url).catch(() => {}); // a nicety: the map works without it
  const countEl = $("#unit-count");
  map.onDrawn = (st) => {
    countEl.textContent = `${st.visible.toLocaleString()} of ${st.total.toLocaleString()} units` +
      (st.noPosition ? ` (${st.noPosition.toLocaleString()} without a fix)` : "") +
      (st.clusters ? ` · grouped in ${st.clusters} cells` : "");
    countEl.dataset.visible = st.visible;
    countEl.dataset.drawn = st.drawn;
    if (probe.perf.firstDrawAt === null && st.total > 0 && probe.perf.snapshotAt !== null) {
      probe.perf.firstDrawAt = performance.now();
      probe.perf.firstDrawUnits = st.drawn;
      performance.mark("watchfloor:markers-drawn");
    }
  };
  store.subscribe(() => map.invalidate({ units: true }));

  const refilter = () => {
    filter.borough = $("#filter-borough").value;
    filter.role = $("#filter-role").value;
    filter.state = $("#filter-state").value;
    filter.search = $("#filter-search").value;
    map.invalidate({ units: true });
    drawSearchResults(ctx, filter);
  };
  for (const id of ["#filter-borough", "#filter-role", "#filter-state"]) $(id).addEventListener("change", refilter);
  let typing = null;
  $("#filter-search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(refilter, 150);
  });
  $("#filter-clear").addEventListener("click", () => {
    for (const id of ["#filter-borough", "#filter-role", "#filter-state", "#filter-search"]) $(id).value = "";
    refilter();
  });
  $("#group-markers").addEventListener("change", (e) => {
    map.grouping = e.target.checked;
    map.invalidate({ units: true });
  });
  $("#zoom-in").addEventListener("click", () => map.zoomBy(1));
  $("#zoom-out").addEventListener("click", () => map.zoomBy(-1));
  $("#zoom-fit").addEventListener("click", () => map.fitLondon());
  // On a phone the filters and legend fold behind this toggle (app.css), after the map and alerts.
  const filtersToggle = $("#filters-toggle");
  filtersToggle.addEventListener("click", () => {
    const open = $(".filters").classList.toggle("open");
    filtersToggle.setAttribute("aria-expanded", String(open));
  });

  const locate = (deviceId) => {
    const u = store.units.get(deviceId);
    if (u && !Number.isNaN(u.mx)) map.centreOn(u.lat, u.lon, 14);
    panel.open(deviceId);
  };
  ctx.locate = locate;
  const reasonDialog = $("#reason-dialog");
  ctx.video = WATCHES_VIDEO.has(role) ? new VideoTiles({ root: $("#video-tiles"), api, store, reasonDialog, mapArea: $("#map") }) : null;
  ctx.replay = REPLAYS.has(role) ? new ReplayView({ root: $("#replay-panel"), api, map, time: ctx.time }) : null;
  probe.replay = ctx.replay;
  show($("#replay-open"), ctx.replay !== null);
  if (ctx.replay) $("#replay-open").addEventListener("click", () => ctx.replay.showForm());
  const incidentsOn = role === "firearms_commander" || role === "operator";
  show($("#incident-panel"), incidentsOn);
  if (role === "firearms_commander") $("#side").prepend($("#incident-panel"));
  ctx.incidents = incidentsOn ? new IncidentPanel({ root: $("#incident-panel"), api, store, map, time: ctx.time,
    onLocate: locate, onReplay: ctx.replay ? (id) => ctx.replay.openIncident(id) : null,
    onLiveView: ctx.video ? (unit, incidentId, prefill) => ctx.video.request(unit, prefill, incidentId) : null }) : null;
  if (ctx.incidents) {
    ctx.incidents.load();
  }
  const panel = new UnitPanel({
    root: $("#unit-panel"), store, api, map,
    actions: [
      { label: "Centre on map", when: (u) => typeof u.lat === "number", run: (u) => map.centreOn(u.lat, u.lon, 15) },
      { label: "Live view…", when: () => ctx.video !== null, run: (u) => ctx.video.request(u) },
      { label: "Assign to incident", when: () => ctx.incidents !== null && ctx.incidents.current !== null,
        run: (u) => ctx.incidents.assign(u) },
    ],
  });
  ctx.panel = panel;
  show($("#alerts-panel"), role !== "admin");
  ctx.alerts = new AlertsPanel({
    root: $("#alerts-panel"), badge: $("#alert-count"), banner: $("#emergency-banner"), store, api,
    canHandle: HANDLES_ALERTS.has(role), onLocate: locate, resolveDialog: new ResolveDialog($("#resolve-dialog")),
    onWatch: ctx.video ? (alert, kindName) => ctx.video.watchAlert(alert, kindName) : null,
  });
  probe.measureFrames = (ms, options) => measureFrames(map, ms, options);
  showStale(ctx); // the feed may have dropped before the map was built
}

// While the live feed is down, what the page shows is as last reported: markers greyed
// (map.js), the unit panel's state too, and the age of the last update on the map.
function feedStatus(ctx, state) {
  if (FEED_DOWN.has(state) && ctx.staleSince === null) {
    ctx.staleSince = ctx.lastFrameAt || Date.now();
    ctx.staleTimer = setInterval(() => showStale(ctx), 1000);
  } else if (state === "live" && ctx.staleSince !== null) {
    ctx.staleSince = null;
    clearInterval(ctx.staleTimer);
  }
  showStale(ctx);
}

function showStale(ctx) {
  const since = ctx.staleSince;
  if (ctx.map && ctx.map.stale !== (since !== null)) {
    ctx.map.stale = since !== null;
    ctx.map.invalidate({ units: true });
  }
  if (ctx.panel) ctx.panel.setStale(since);
  const note = $("#map-stale");
  show(note, since !== null);
  note.textContent = since === null ? "" : `Not live: units as last reported, last update ${fmtAgo(since)}`;
}

function drawSearchResults(ctx, filter) {
  const list = clear($("#search-results"));
  const q = filter.search.trim().toLowerCase();
  if (!q) return;
  const match = filter.matcher(ctx.store);
  const found = [];
  for (const u of ctx.store.units.values()) {
    if (match(u)) found.push(u);
    if (found.length > 20) break;
  }
  for (const u of found.slice(0, 20)) {
    list.append(h("li", {}, h("button", { type: "button", class: "link", onclick: () => ctx.locate(u.device_id) },
      `${u.callsign || u.device_id}`), ` ${u.officer || ""} · ${u.borough || ""} · ${u.state} · ${fmtPct(u.battery_pct)}`));
  }
  if (!found.length) list.append(h("li", { class: "muted" }, "No unit matches."));
}

function setConnection(state, text) {
  const el = $("#conn-state");
  el.dataset.state = state;
  const labels = { live: "● Live", connecting: "Connecting…", reconnecting: "Reconnecting…",
                   disconnected: "Disconnected", refused: "Refused", polling: "● Polling", idle: "" };
  el.textContent = state in labels ? labels[state] : state;
  el.title = text || "";
  const banner = $("#conn-banner");
  const down = state === "disconnected" || state === "reconnecting" || state === "refused";
  show(banner, down);
  banner.textContent = text;
}

function startFeed(ctx) {
  const { store } = ctx;
  const feed = new LiveFeed({
    token: api.token,
    onStatus: (state, detail) => {
      if (state === "disconnected") setConnection(state, `Disconnected — reconnecting in ${Math.ceil(detail / 1000)} s…`);
      else if (state === "reconnecting") setConnection(state, "Disconnected — reconnecting…");
      else if (state === "ended") signOut(`Your session has ended (${detail}): sign in again.`);
      else if (state === "refused") {
        if (!api.valid()) signOut("Your session has ended: sign in again.");
        else setConnection(state, `The live feed refused this session: ${detail}`);
      } else setConnection(state, state === "live" ? "Live feed connected" : "");
      feedStatus(ctx, state);
    },
    onFrame: (frame) => {
      ctx.lastFrameAt = Date.now();
      switch (frame.type) {
        case "snapshot":
          probe.perf.snapshots += 1;
          if (probe.perf.snapshotAt === null) {
            probe.perf.snapshotAt = performance.now();
            performance.mark("watchfloor:snapshot");
          }
          store.replaceUnits(frame.units);
          store.replaceAlerts(frame.alerts || []);
          if (ctx.alerts) ctx.alerts.render();
          break;
        case "delta":
          probe.perf.deltas += 1;
          probe.perf.deltaUnits += frame.units.length;
          if (frame.removed) store.removeUnits(frame.removed);
          store.mergeUnits(frame.units);
          break;
        case "alerts":
          store.mergeAlerts(frame.alerts, { fresh: true });
          break;
        case "alerts_dropped":
          if (ctx.alerts) ctx.alerts.refresh();
          break;
        case "live_view":
          if (ctx.video) ctx.video.onFrame(frame);
          break;
        default:
          break;
      }
    },
  });
  feed.start();
  ctx.feed = feed;
}

async function loadFromRest(ctx) {
  const all = [];
  try {
    for (let offset = 0; ; offset += 1000) {
      const page = await api.get("/api/v1/devices", { limit: 1000, offset });
      all.push(...page.items);
      if (offset + page.items.length >= page.total || !page.items.length) break;
    }
  } catch (error) {
    setConnection("disconnected", `Could not load devices: ${error.message}`);
    return;
  }
  setConnection("polling", "Updated from the API every 30 s (admins are not on the live feed)");
  if (probe.perf.snapshotAt === null) probe.perf.snapshotAt = performance.now();
  ctx.store.replaceUnits(all);
}

// Counts animation frames for `ms` while the page does its normal work (and optionally pans
// the map a little every frame, as a user dragging it would).
function measureFrames(map, ms, { pan = false } = {}) {
  return new Promise((resolve) => {
    const gaps = [];
    const rendersBefore = map.stats.renders;
    const deltasBefore = probe.perf.deltas;
    const unitsBefore = probe.perf.deltaUnits;
    let renderMs = 0;
    const started = performance.now();
    let last = started;
    let direction = 1;
    const tick = (now) => {
      gaps.push(now - last);
      last = now;
      renderMs = Math.max(renderMs, map.stats.renderMs);
      if (pan) {
        if (gaps.length % 120 === 0) direction = -direction;
        map.view.cx += (direction * 3) / map.worldPx();
        map.interacted();
      }
      if (now - started < ms) requestAnimationFrame(tick);
      else {
        gaps.shift();
        const sorted = [...gaps].sort((a, b) => a - b);
        resolve({
          frames: gaps.length, seconds: (now - started) / 1000, fps: gaps.length / ((now - started) / 1000),
          p95FrameMs: sorted[Math.floor(sorted.length * 0.95)] || 0, maxFrameMs: sorted.at(-1) || 0,
          unitRenders: map.stats.renders - rendersBefore, lastUnitRenderMs: map.stats.renderMs, maxUnitRenderMs: renderMs,
          units: map.stats.total, drawn: map.stats.drawn, clusters: map.stats.clusters,
          deltas: probe.perf.deltas - deltasBefore, deltaUnits: probe.perf.deltaUnits - unitsBefore,
        });
      }
    };
    requestAnimationFrame((now) => {
      last = now;
      requestAnimationFrame(tick);
    });
  });
}

if (api.valid()) startSession();
else {
  if (api.session) api.signOut();
  showSignIn();
}
