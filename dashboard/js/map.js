// The live map, on canvas. Measured in headless Chromium here (FINDINGS: "Drawing 22,000
// units"): a full redraw of 22,000 round markers runs at 8-13 fps, fillRect squares at 45.
// So: markers are fillRect squares; when zoomed out they are grouped into grid cells (one
// box and a count per cell); the unit layer is redrawn only when a batch of updates has
// arrived (at most every UNIT_REDRAW_MS) or the view settles; while the user pans or zooms,
// each frame only moves and scales the cached layers with drawImage.

import { LOW_BATTERY_PCT, mercator } from "./store.js";

// Web Mercator's world (0..1 each way) back to a latitude and longitude.
function fromMercator(mx, my) {
  return [(Math.atan(Math.sinh(Math.PI * (1 - 2 * my))) * 180) / Math.PI, mx * 360 - 180];
}

export const STATE_COLOURS = { recording: "#ff453a", buffering: "#30d158", off: "#a1a7ad", offline: "#6b7178" };
const EMERGENCY = "#ff2bd6";
const LIVE = "#3fc8ff";
const LOW_BATTERY = "#ffd60a";
const SELECTED = "#ffffff";
// An incident's area and its assigned units share one colour, apart from live video's cyan.
const INCIDENT = "#ff9f0a";
const NOT_RECORDING = "#ff453a";
// Every marker while the live feed is down: the picture is as last reported, not live.
const STALE = "#4d5560";
const UNIT_REDRAW_MS = 200; // a live delta comes at most 4 times a second
// While the user drags, the cached layers move with every frame; the outlines are redrawn at
// most this often, and the (costlier) unit layer at most once a second.
const INTERACTING_REDRAW_MS = 400;
const INTERACTING_UNIT_REDRAW_MS = 1000;
const CLUSTER_CELL_PX = 40;
// Fewer units than this stay apart at any zoom: they are legible, and cheap to draw.
const CLUSTER_MIN_UNITS = 2000;
const LONDON = { west: -0.52, east: 0.34, south: 51.28, north: 51.7 };
const MIN_ZOOM = 8;
const MAX_ZOOM = 19;
const EARTH_M = 40075016.686;
// Transport for London's line colours (a few lightened to show on the dark map).
const TUBE_COLOURS = {
  Bakerloo: "#b36305", Central: "#e32017", Circle: "#ffd300", District: "#00a03a", "Hammersmith & City": "#f3a9bb",
  Jubilee: "#a0a5a9", Metropolitan: "#c0307a", Northern: "#9a9a9a", Piccadilly: "#3a6fd8", Victoria: "#0098d4",
  "Waterloo & City": "#95cdba", DLR: "#00a4a7",
};

function layer() {
  return { canvas: document.createElement("canvas"), view: null, dirty: true, renderedAt: 0 };
}

export class MapView {
  constructor({ container, store, filter, config, onSelect }) {
    this.container = container;
    this.canvas = container.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.store = store;
    this.filter = filter;
    this.config = config;
    this.onSelect = onSelect;
    this.width = 0;
    this.height = 0;
    this.dpr = 1;
    this.view = { cx: 0.5, cy: 0.5, zoom: 10 };
    this.base = layer();
    this.units = layer();
    this.boroughs = [];
    this.tube = null;
    this.tiles = new Map();
    this.grouping = true;
    this.large = false;
    this.selected = null;
    this.highlight = new Set(); // an incident's assigned units: an orange double frame
    this.alarms = new Set(); // assigned firearms units not recording: "NOT RECORDING" on the marker
    this.picked = new Set(); // units chosen on the map for assignment: a dashed white frame
    this.alarmsDrawn = []; // the units whose "NOT RECORDING" plate the last render drew
    this.stale = false; // the live feed is down: markers greyed, no live colours (main.js)
    this.circles = []; // incident areas: {lat, lon, radius_m, polygon ([lon, lat] ring) or null, label}
    this.draft = null; // an area being drawn: [[lon, lat], ...]
    // While set, a click picks a point or a unit for the incident panel instead of opening the
    // unit: {onPoint(lat, lon), onUnit(unit), onFinish()}; a double click calls onFinish.
    this.mode = null;
    this.track = null; // {points: [{mx, my, ts, recording}], at: index or null}
    // A replay's units at its current time (replay.js): [{device_id, lat, lon, recording, label}],
    // drawn over the live picture with a label; replayDrawn lists those the last frame drew.
    this.replay = null;
    this.replayDrawn = [];
    this.interactingUntil = 0;
    this.frameRequested = false;
    this.timer = null;
    this.hits = { xs: [], ys: [], units: [], count: 0, cells: [] };
    this.stats = { visible: 0, drawn: 0, clusters: 0, noPosition: 0, renderMs: 0, renders: 0 };
    this.onDrawn = null; // called after each unit-layer render with this.stats
    this.fitted = false;
    this.bindInput();
    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
  }

  // ---- data in

  async loadBoroughs(url) {
    const geo = await (await fetch(url)).json();
    this.boroughs = geo.features.map((f) => {
      const polygons = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
      const rings = [];
      let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
      for (const polygon of polygons) {
        for (const ring of polygon) {
          const pts = new Float64Array(ring.length * 2);
          ring.forEach(([lon, lat], i) => {
            const [x, y] = mercator(lat, lon);
            pts[2 * i] = x;
            pts[2 * i + 1] = y;
            minX = Math.min(minX, x); maxX = Math.max(maxX, x);
            minY = Math.min(minY, y); maxY = Math.max(maxY, y);
          });
          rings.push(pts);
        }
      }
      return { name: f.properties.name, rings, cx: (minX + maxX) / 2, cy: (minY + maxY) / 2 };
    });
    this.invalidate({ base: true });
    return this.boroughs.map((b) => b.name).sort();
  }

  // The Underground, drawn faintly in each line's colour: with the outlines, London is
  // recognisable at a glance without a tile server.
  async loadTube(url) {
    const geo = await (await fetch(url)).json();
    const byLine = new Map();
    for (const f of geo.features) {
      const lines = f.geometry.type === "LineString" ? [f.geometry.coordinates] : f.geometry.coordinates;
      const list = byLine.get(f.properties.name) || [];
      for (const line of lines) {
        const pts = new Float64Array(line.length * 2);
        line.forEach(([lon, lat], i) => {
          [pts[2 * i], pts[2 * i + 1]] = mercator(lat, lon);
        });
        list.push(pts);
      }
      byLine.set(f.properties.name, list);
    }
    this.tube = [...byLine.entries()].map(([name, paths]) => ({ colour: TUBE_COLOURS[name] || "#8899aa", paths }));
    this.invalidate({ base: true });
  }

  invalidate({ base = false, units = false } = {}) {
    if (base) this.base.dirty = true;
    if (units) this.units.dirty = true;
    this.requestFrame();
  }

  setSelected(deviceId) {
    this.selected = deviceId;
    this.invalidate({ units: true });
  }

  centreOn(lat, lon, zoom = null) {
    [this.view.cx, this.view.cy] = mercator(lat, lon);
    if (zoom !== null) this.view.zoom = Math.max(this.view.zoom, zoom);
    this.invalidate({ base: true, units: true });
  }

  fitLondon() {
    const [x0, y1] = mercator(LONDON.south, LONDON.west);
    const [x1, y0] = mercator(LONDON.north, LONDON.east);
    this.view.cx = (x0 + x1) / 2;
    this.view.cy = (y0 + y1) / 2;
    const zx = Math.log2(this.width / 256 / (x1 - x0));
    const zy = Math.log2(this.height / 256 / (y1 - y0));
    this.view.zoom = Math.max(MIN_ZOOM, Math.min(zx, zy));
    this.invalidate({ base: true, units: true });
  }

  zoomBy(delta, sx = this.width / 2, sy = this.height / 2) {
    const before = this.toWorld(sx, sy);
    this.view.zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, this.view.zoom + delta));
    const W = this.worldPx();
    this.view.cx = before[0] - (sx - this.width / 2) / W;
    this.view.cy = before[1] - (sy - this.height / 2) / W;
    this.interacted();
  }

  // ---- geometry

  worldPx(zoom = this.view.zoom) {
    return 256 * 2 ** zoom;
  }

  toScreen(mx, my) {
    const W = this.worldPx();
    return [(mx - this.view.cx) * W + this.width / 2, (my - this.view.cy) * W + this.height / 2];
  }

  toWorld(sx, sy) {
    const W = this.worldPx();
    return [(sx - this.width / 2) / W + this.view.cx, (sy - this.height / 2) / W + this.view.cy];
  }

  markerSize() {
    const z = this.view.zoom;
    const base = z < 11 ? 5 : z < 13 ? 7 : z < 15 ? 9 : 11;
    return Math.round(base * (this.large ? 1.5 : 1));
  }

  resize() {
    const rect = this.container.getBoundingClientRect();
    this.dpr = Math.min(2, window.devicePixelRatio || 1);
    this.width = Math.max(1, Math.round(rect.width));
    this.height = Math.max(1, Math.round(rect.height));
    for (const c of [this.canvas, this.base.canvas, this.units.canvas]) {
      c.width = Math.round(this.width * this.dpr);
      c.height = Math.round(this.height * this.dpr);
    }
    if (!this.fitted && this.width > 10) {
      this.fitted = true;
      this.fitLondon();
    }
    this.invalidate({ base: true, units: true });
  }

  // ---- input

  bindInput() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, cx: this.view.cx, cy: this.view.cy, moved: false };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
      if (!drag.moved) return;
      const W = this.worldPx();
      this.view.cx = drag.cx - dx / W;
      this.view.cy = drag.cy - dy / W;
      this.interacted();
    });
    c.addEventListener("pointerup", (e) => {
      if (drag && !drag.moved) {
        const r = c.getBoundingClientRect();
        this.click(e.clientX - r.left, e.clientY - r.top);
      }
      drag = null;
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      const step = e.deltaMode === 1 ? e.deltaY * 40 : e.deltaY;
      this.zoomBy(-step * 0.002, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    c.addEventListener("dblclick", (e) => {
      if (this.mode && this.mode.onFinish) {
        this.mode.onFinish();
        return;
      }
      const r = c.getBoundingClientRect();
      this.zoomBy(1, e.clientX - r.left, e.clientY - r.top);
    });
    c.addEventListener("keydown", (e) => {
      const W = this.worldPx();
      const moves = { ArrowLeft: [-80, 0], ArrowRight: [80, 0], ArrowUp: [0, -80], ArrowDown: [0, 80] };
      if (moves[e.key]) {
        this.view.cx += moves[e.key][0] / W;
        this.view.cy += moves[e.key][1] / W;
        this.interacted();
      } else if (e.key === "+" || e.key === "=") this.zoomBy(0.5);
      else if (e.key === "-") this.zoomBy(-0.5);
    });
  }

  interacted() {
    this.interactingUntil = performance.now() + 150;
    this.base.dirty = true;
    this.units.dirty = true;
    this.requestFrame();
  }

  // The latitude and longitude under a point of the canvas.
  latLonAt(x, y) {
    return fromMercator(...this.toWorld(x, y));
  }

  // The places a new incident can be centred on by name, offline: each borough, at the centre
  // of its outline's box (where its name is drawn). Empty until loadBoroughs has run.
  places() {
    return this.boroughs.map((b) => {
      const [lat, lon] = fromMercator(b.cx, b.cy);
      return { name: b.name, lat, lon };
    });
  }

  setMode(mode) {
    this.mode = mode;
    this.canvas.classList.toggle("picking", mode !== null);
  }

  click(x, y) {
    const unit = this.unitAt(x, y);
    if (this.mode) {
      if (unit && this.mode.onUnit) this.mode.onUnit(unit);
      else if (this.mode.onPoint) this.mode.onPoint(...this.latLonAt(x, y));
      return;
    }
    if (unit) {
      this.onSelect(unit.device_id);
      return;
    }
    const cell = this.hits.cells.find((k) => Math.abs(k.x - x) <= k.side / 2 + 3 && Math.abs(k.y - y) <= k.side / 2 + 3);
    if (cell) this.zoomBy(2, cell.x, cell.y);
  }

  // The unit drawn nearest to (x, y), within a few pixels; the last drawn wins a tie (it is on top).
  unitAt(x, y) {
    const { xs, ys, units, count } = this.hits;
    const reach = Math.max(8, this.markerSize());
    let best = null;
    let bestD = reach * reach;
    for (let i = 0; i < count; i++) {
      const dx = xs[i] - x;
      const dy = ys[i] - y;
      const d = dx * dx + dy * dy;
      if (d <= bestD) {
        bestD = d;
        best = units[i];
      }
    }
    return best;
  }

  // ---- drawing

  requestFrame() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => this.frame());
  }

  // One animation frame: redraw a layer only when it is stale and its pause is over, then
  // compose. A layer still waiting gets a timer, not a spin of empty frames.
  frame() {
    this.frameRequested = false;
    const now = performance.now();
    const interacting = now < this.interactingUntil;
    let retryIn = Infinity;
    if (this.base.dirty) {
      const wait = interacting ? INTERACTING_REDRAW_MS - (now - this.base.renderedAt) : 0;
      if (wait <= 0) this.renderBase();
      else retryIn = Math.min(retryIn, wait);
    }
    if (this.units.dirty) {
      // Batches arrive 4 times a second; a redraw that costs more than its share of the
      // main thread (software raster on a busy machine) waits longer, so frames stay smooth.
      const gap = interacting ? INTERACTING_UNIT_REDRAW_MS : Math.max(UNIT_REDRAW_MS, this.stats.renderMs * 6);
      const wait = gap - (now - this.units.renderedAt);
      if (wait <= 0) this.renderUnits();
      else retryIn = Math.min(retryIn, wait);
    }
    this.compose();
    if (retryIn < Infinity) {
      this.later(interacting ? Math.min(retryIn, this.interactingUntil - now + 1) : retryIn);
    }
  }

  later(ms) {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.requestFrame();
    }, Math.max(8, ms));
  }

  withLayer(l, draw) {
    const ctx = l.canvas.getContext("2d");
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.width, this.height);
    draw(ctx);
    l.view = { ...this.view };
    l.dirty = false;
    l.renderedAt = performance.now();
  }

  renderBase() {
    this.withLayer(this.base, (ctx) => {
      ctx.fillStyle = "#0d1520";
      ctx.fillRect(0, 0, this.width, this.height);
      if (this.config.tiles) this.drawTiles(ctx);
      const W = this.worldPx();
      const ox = this.width / 2 - this.view.cx * W;
      const oy = this.height / 2 - this.view.cy * W;
      ctx.beginPath();
      for (const b of this.boroughs) {
        for (const pts of b.rings) {
          ctx.moveTo(pts[0] * W + ox, pts[1] * W + oy);
          for (let i = 2; i < pts.length; i += 2) ctx.lineTo(pts[i] * W + ox, pts[i + 1] * W + oy);
          ctx.closePath();
        }
      }
      if (!this.config.tiles) {
        ctx.fillStyle = "#172434";
        ctx.fill();
      }
      ctx.strokeStyle = this.config.tiles ? "rgba(40, 70, 110, 0.8)" : "#3d5670";
      ctx.lineWidth = 1;
      ctx.stroke();
      if (this.tube) {
        ctx.globalAlpha = this.config.tiles ? 0.7 : 0.45;
        ctx.lineWidth = this.view.zoom >= 13 ? 2.5 : 1.5;
        for (const line of this.tube) {
          ctx.strokeStyle = line.colour;
          ctx.beginPath();
          for (const pts of line.paths) {
            ctx.moveTo(pts[0] * W + ox, pts[1] * W + oy);
            for (let i = 2; i < pts.length; i += 2) ctx.lineTo(pts[i] * W + ox, pts[i + 1] * W + oy);
          }
          ctx.stroke();
        }
        ctx.globalAlpha = 1;
      }
      if (this.view.zoom >= 10.2) {
        ctx.fillStyle = this.config.tiles ? "rgba(20, 40, 70, 0.9)" : "#6f8aa3";
        ctx.font = `${this.large ? 15 : 11}px system-ui, sans-serif`;
        ctx.textAlign = "center";
        for (const b of this.boroughs) ctx.fillText(b.name, b.cx * W + ox, b.cy * W + oy);
      }
    });
  }

  drawTiles(ctx) {
    const z = Math.max(0, Math.min(19, Math.round(this.view.zoom)));
    const n = 2 ** z;
    const size = 256 * 2 ** (this.view.zoom - z);
    const W = this.worldPx();
    const left = this.view.cx * W - this.width / 2;
    const top = this.view.cy * W - this.height / 2;
    const x0 = Math.floor(left / size), x1 = Math.floor((left + this.width) / size);
    const y0 = Math.max(0, Math.floor(top / size)), y1 = Math.min(n - 1, Math.floor((top + this.height) / size));
    for (let ty = y0; ty <= y1; ty++) {
      for (let tx = x0; tx <= x1; tx++) {
        const img = this.tile(z, ((tx % n) + n) % n, ty);
        if (img.complete && img.naturalWidth > 0) {
          ctx.drawImage(img, tx * size - left, ty * size - top, size + 0.5, size + 0.5);
        }
      }
    }
  }

  tile(z, x, y) {
    const url = this.config.tiles.url.replace("{z}", z).replace("{x}", x).replace("{y}", y);
    let img = this.tiles.get(url);
    if (!img) {
      if (this.tiles.size > 400) this.tiles.delete(this.tiles.keys().next().value);
      img = new Image();
      img.onload = () => this.invalidate({ base: true });
      img.src = url;
      this.tiles.set(url, img);
    }
    return img;
  }

  renderUnits() {
    const started = performance.now();
    const match = this.filter.active() ? this.filter.matcher(this.store) : null;
    const emergencies = this.store.emergencies;
    const selected = this.selected;
    const highlight = this.highlight;
    const picked = this.picked;
    const anySpecial = emergencies.size > 0 || selected !== null || highlight.size > 0 || picked.size > 0;
    const W = this.worldPx();
    const w = this.width, hgt = this.height;
    const ox = w / 2 - this.view.cx * W;
    const oy = hgt / 2 - this.view.cy * W;
    const s = this.markerSize();
    const half = s >> 1;
    const cluster = this.grouping && this.view.zoom < 13.5 && this.store.units.size > CLUSTER_MIN_UNITS;
    const cols = Math.ceil((w + 40) / CLUSTER_CELL_PX) + 1;
    const cells = cluster ? new Map() : null;
    const buf = this.buffers(this.store.units.size);
    buf.reset();
    const special = [];
    let visible = 0, noPosition = 0, drawn = 0;
    for (const u of this.store.units.values()) {
      if (match !== null && !match(u)) continue;
      visible++;
      if (u.mx !== u.mx) { // NaN: no fix yet
        noPosition++;
        continue;
      }
      // Whole pixels: software raster fills an aligned rectangle far faster than a blended one.
      const x = (u.mx * W + ox + 0.5) | 0;
      const y = (u.my * W + oy + 0.5) | 0;
      if (x < -20 || y < -20 || x > w + 20 || y > hgt + 20) continue;
      drawn++;
      if (anySpecial && (emergencies.has(u.device_id) || u.device_id === selected || highlight.has(u.device_id) ||
          picked.has(u.device_id))) {
        special.push([x, y, u]);
        continue;
      }
      if (cells !== null) {
        const key = ((x + 20) / CLUSTER_CELL_PX | 0) + ((y + 20) / CLUSTER_CELL_PX | 0) * cols;
        let c = cells.get(key);
        if (c === undefined) {
          c = { n: 0, sx: 0, sy: 0, recording: 0, buffering: 0, offline: 0, first: u, fx: x, fy: y };
          cells.set(key, c);
        }
        c.n++;
        c.sx += x;
        c.sy += y;
        if (u.state === "recording") c.recording++;
        else if (u.state === "buffering") c.buffering++;
        else if (u.state === "offline") c.offline++;
        continue;
      }
      buf.add(x, y, u);
    }
    const hitCells = [];
    this.withLayer(this.units, (ctx) => {
      if (cells !== null) {
        for (const c of cells.values()) if (c.n === 1) buf.add(c.fx, c.fy, c.first);
      }
      this.drawMarkers(ctx, buf, s, half);
      if (cells !== null) this.drawClusters(ctx, cells, hitCells);
      // Emergencies, the selected, assigned and picked units: never grouped, always on top.
      this.alarmsDrawn = [];
      for (const [x, y, u] of special) this.drawSpecial(ctx, x, y, u, s, emergencies.has(u.device_id));
      for (const [x, y, u] of special) buf.hit(x, y, u);
    });
    this.hits = { xs: buf.hx, ys: buf.hy, units: buf.hu, count: buf.hn, cells: hitCells };
    const renderMs = performance.now() - started;
    this.stats = { visible, drawn, noPosition, clusters: hitCells.length, renderMs, renders: this.stats.renders + 1,
                   total: this.store.units.size };
    if (this.onDrawn) this.onDrawn(this.stats);
  }

  // One unit on top of the rest. Each mark has its own frame, so they combine: live video the
  // cyan one it has everywhere; assigned to the incident an orange double frame; picked a
  // dashed white one;
  // an assigned firearms unit not recording a red "NOT RECORDING" plate under it.
  drawSpecial(ctx, x, y, u, s, emergency) {
    const id = u.device_id;
    const assigned = this.highlight.has(id);
    const big = emergency ? s + 8 : s + 2;
    // Stale, the fill is grey and live video unmarked (the picture is as last reported); an
    // emergency keeps its colour in the outline and label, to stay in sight.
    const live = u.live && !this.stale;
    ctx.fillStyle = this.stale ? STALE : emergency ? EMERGENCY : STATE_COLOURS[u.state] || STATE_COLOURS.off;
    ctx.fillRect(x - big / 2, y - big / 2, big, big);
    ctx.lineWidth = 2;
    const frame = (pad) => ctx.strokeRect(x - big / 2 - pad, y - big / 2 - pad, big + 2 * pad, big + 2 * pad);
    if (live || id === this.selected || emergency) {
      ctx.strokeStyle = live ? LIVE : id === this.selected ? SELECTED : this.stale ? EMERGENCY : SELECTED;
      frame(2);
    }
    if (assigned) {
      ctx.strokeStyle = INCIDENT;
      frame(5);
      frame(8.5);
    }
    if (this.picked.has(id)) {
      ctx.setLineDash([3, 3]);
      ctx.strokeStyle = SELECTED;
      frame(12);
      ctx.setLineDash([]);
    }
    const font = this.large ? 16 : 12;
    if (emergency || assigned || this.view.zoom >= 13) {
      ctx.font = `bold ${font}px system-ui, sans-serif`;
      ctx.textAlign = "left";
      ctx.fillStyle = emergency ? EMERGENCY : assigned ? INCIDENT : "#ffffff";
      ctx.fillText(`${emergency ? "SOS " : ""}${u.callsign || id}`, x + big / 2 + 9, y + 4);
    }
    if (this.alarms.has(id)) {
      const text = "NOT RECORDING";
      ctx.font = `800 ${font - 1}px system-ui, sans-serif`;
      const w = ctx.measureText(text).width + 8;
      const top = y + big / 2 + 9;
      ctx.fillStyle = NOT_RECORDING;
      ctx.fillRect(x - w / 2, top, w, font + 4);
      ctx.fillStyle = "#ffffff";
      ctx.textAlign = "center";
      ctx.fillText(text, x, top + font);
      this.alarmsDrawn.push(id);
    }
  }

  // Reused between renders: 22,000 units make no garbage for the collector to chase.
  buffers(size) {
    if (!this.buf || this.buf.capacity < size) this.buf = new MarkerBuffers(Math.max(1024, size * 1.25 | 0));
    return this.buf;
  }

  drawMarkers(ctx, buf, s, half) {
    // One fillStyle per state, then plain fillRects on whole pixels: the cheap path measured above.
    for (const state of ["off", "buffering", "recording"]) {
      const pts = buf.points[state];
      const n = buf.counts[state];
      ctx.fillStyle = this.stale ? STALE : STATE_COLOURS[state];
      for (let i = 0; i < n; i += 2) ctx.fillRect(pts[i] - half, pts[i + 1] - half, s, s);
    }
    const off = buf.points.offline;
    const nOff = buf.counts.offline;
    ctx.fillStyle = "#0d1520";
    for (let i = 0; i < nOff; i += 2) ctx.fillRect(off[i] - half, off[i + 1] - half, s, s);
    ctx.strokeStyle = STATE_COLOURS.offline;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i < nOff; i += 2) ctx.rect(off[i] - half + 0.5, off[i + 1] - half + 0.5, s - 1, s - 1);
    ctx.stroke();
    if (this.stale) return; // battery and live video are live facts: not shown as if current
    ctx.fillStyle = LOW_BATTERY;
    const bar = Math.max(2, Math.round(s / 3));
    for (let i = 0; i < buf.counts.low; i += 2) ctx.fillRect(buf.points.low[i] - half, buf.points.low[i + 1] + half + 1, s, bar);
    ctx.strokeStyle = LIVE;
    ctx.lineWidth = 2;
    ctx.beginPath();
    for (let i = 0; i < buf.counts.live; i += 2) ctx.rect(buf.points.live[i] - half - 2, buf.points.live[i + 1] - half - 2, s + 4, s + 4);
    ctx.stroke();
  }

  drawClusters(ctx, cells, hitCells) {
    ctx.font = `bold ${this.large ? 15 : 11}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const c of cells.values()) {
      if (c.n < 2) continue;
      const x = c.sx / c.n;
      const y = c.sy / c.n;
      const side = Math.min(CLUSTER_CELL_PX - 6, (this.large ? 24 : 18) + 5 * Math.log10(c.n));
      ctx.fillStyle = "rgba(32, 58, 92, 0.92)";
      ctx.fillRect(x - side / 2, y - side / 2, side, side);
      // A bar along the bottom: recording, buffering, offline, the rest, in proportion.
      let bx = x - side / 2;
      const by = y + side / 2 - 4;
      for (const [count, colour] of [[c.recording, this.stale ? STALE : STATE_COLOURS.recording],
                                     [c.buffering, this.stale ? STALE : STATE_COLOURS.buffering], [c.offline, "#000000"]]) {
        const bw = (side * count) / c.n;
        ctx.fillStyle = colour;
        ctx.fillRect(bx, by, bw, 4);
        bx += bw;
      }
      ctx.fillStyle = "#ffffff";
      ctx.fillText(c.n > 999 ? `${(c.n / 1000).toFixed(1)}k` : String(c.n), x, y - 2);
      hitCells.push({ x, y, side, n: c.n });
    }
    ctx.textBaseline = "alphabetic";
  }

  compose() {
    const ctx = this.ctx;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.fillStyle = "#0d1520";
    ctx.fillRect(0, 0, this.width, this.height);
    for (const l of [this.base, this.units]) {
      if (!l.view) continue;
      const k = 2 ** (this.view.zoom - l.view.zoom);
      const W = this.worldPx();
      const dx = (this.width / 2) * (1 - k) + (l.view.cx - this.view.cx) * W;
      const dy = (this.height / 2) * (1 - k) + (l.view.cy - this.view.cy) * W;
      ctx.drawImage(l.canvas, dx, dy, this.width * k, this.height * k);
    }
    this.drawOverlay(ctx);
  }

  tracePath(ctx, lonLats, close) {
    lonLats.forEach(([lon, lat], i) => {
      const [x, y] = this.toScreen(...mercator(lat, lon));
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    if (close) ctx.closePath();
  }

  drawOverlay(ctx) {
    const W = this.worldPx();
    for (const c of this.circles) {
      const [mx, my] = mercator(c.lat, c.lon);
      const [x, y] = this.toScreen(mx, my);
      const r = (c.radius_m * W) / (EARTH_M * Math.cos((c.lat * Math.PI) / 180));
      ctx.beginPath();
      if (c.polygon) this.tracePath(ctx, c.polygon, true);
      else ctx.arc(x, y, Math.max(r, 4), 0, 2 * Math.PI);
      ctx.fillStyle = "rgba(255, 159, 10, 0.12)";
      ctx.fill();
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = "#ff9f0a";
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#ff9f0a";
      ctx.font = `bold ${this.large ? 16 : 12}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      // Above the area: a polygon's highest corner, or the circle's top.
      const top = c.polygon ? Math.min(...c.polygon.map(([lon, lat]) => this.toScreen(...mercator(lat, lon))[1]))
        : y - Math.max(r, 4);
      ctx.fillText(c.label, x, top - 6);
    }
    if (this.draft && this.draft.length) {
      ctx.beginPath();
      this.tracePath(ctx, this.draft, false);
      ctx.strokeStyle = INCIDENT;
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.fillStyle = INCIDENT;
      for (const [lon, lat] of this.draft) {
        const [x, y] = this.toScreen(...mercator(lat, lon));
        ctx.fillRect(x - 4, y - 4, 8, 8);
      }
    }
    this.drawReplay(ctx);
    if (this.track && this.track.points.length) {
      const pts = this.track.points;
      const upto = this.track.at === null ? pts.length - 1 : this.track.at;
      ctx.lineWidth = 3;
      ctx.lineJoin = "round";
      for (let i = 1; i <= upto; i++) {
        const [x0, y0] = this.toScreen(pts[i - 1].mx, pts[i - 1].my);
        const [x1, y1] = this.toScreen(pts[i].mx, pts[i].my);
        ctx.strokeStyle = pts[i].recording === "recording" ? "#ff453a" : "#64d2ff";
        ctx.beginPath();
        ctx.moveTo(x0, y0);
        ctx.lineTo(x1, y1);
        ctx.stroke();
      }
      const p = pts[Math.max(0, upto)];
      const [x, y] = this.toScreen(p.mx, p.my);
      ctx.fillStyle = "#ffffff";
      ctx.beginPath();
      ctx.arc(x, y, 7, 0, 2 * Math.PI);
      ctx.fill();
      ctx.strokeStyle = "#0a84ff";
      ctx.lineWidth = 3;
      ctx.stroke();
    }
  }

  drawReplay(ctx) {
    const drawn = [];
    if (this.replay) {
      ctx.font = `bold ${this.large ? 14 : 11}px system-ui, sans-serif`;
      ctx.textAlign = "left";
      for (const u of this.replay) {
        const [x, y] = this.toScreen(...mercator(u.lat, u.lon));
        if (x < -20 || y < -20 || x > this.width + 20 || y > this.height + 20) continue;
        ctx.beginPath();
        ctx.arc(x, y, this.large ? 9 : 7, 0, 2 * Math.PI);
        ctx.fillStyle = STATE_COLOURS[u.recording] || STATE_COLOURS.off;
        ctx.fill();
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = 2;
        ctx.stroke();
        ctx.fillStyle = "#ffffff";
        ctx.fillText(u.label, x + 10, y + 4);
        drawn.push(u.device_id);
      }
    }
    this.replayDrawn = drawn;
  }
}

// Marker positions per kind, in typed arrays sized for the fleet, refilled on every render.
class MarkerBuffers {
  constructor(capacity) {
    this.capacity = capacity;
    this.points = {};
    this.counts = {};
    for (const kind of ["off", "buffering", "recording", "offline", "low", "live"]) {
      this.points[kind] = new Float32Array(capacity * 2);
      this.counts[kind] = 0;
    }
    this.hx = new Float32Array(capacity + 64);
    this.hy = new Float32Array(capacity + 64);
    this.hu = new Array(capacity + 64);
    this.hn = 0;
  }

  reset() {
    for (const kind in this.counts) this.counts[kind] = 0;
    this.hn = 0;
  }

  push(kind, x, y) {
    const n = this.counts[kind];
    const pts = this.points[kind];
    pts[n] = x;
    pts[n + 1] = y;
    this.counts[kind] = n + 2;
  }

  add(x, y, u) {
    this.push(u.state in this.counts && u.state !== "low" && u.state !== "live" ? u.state : "off", x, y);
    if (u.battery_pct !== null && u.battery_pct < LOW_BATTERY_PCT && !u.charging) this.push("low", x, y);
    if (u.live) this.push("live", x, y);
    this.hit(x, y, u);
  }

  hit(x, y, u) {
    if (this.hn >= this.hx.length) return; // specials beyond the headroom are still drawn, not clickable
    this.hx[this.hn] = x;
    this.hy[this.hn] = y;
    this.hu[this.hn] = u;
    this.hn++;
  }
}
