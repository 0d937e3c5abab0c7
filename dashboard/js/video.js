// Live video tiles. Watching a unit is a request to its camera, with a reason asked first:
//   POST /api/v1/devices/{id}/live-view {reason}  -> a request, pending until the camera
//   accepts or declines (pushed on the live feed as {"type": "live_view", ...}, and readable
//   at GET /api/v1/live-view/requests/{request_id});
//   then WHEP (RFC 9725): POST /api/v1/whep/{id} with our SDP offer -> 201, the answer and a
//   Location; DELETE that Location to stop watching.
// aiortc (the relay) does not trickle ICE, so the offer is sent once gathering is complete.
// "Watch now" on a watch_me or emergency alert is the same request with the reason prefilled
// from the alert: when the officer asked to be watched (watch_me), the consent of their ask
// covers the request and it is accepted at once, the camera not asked again; otherwise
// (an emergency grants no consent) the camera is asked, and the tile waits for the officer.

import { $, h } from "./dom.js";

const MAX_TILES = 6;
const POLL_MS = 1500;
const REQUEST_TIMEOUT_MS = 90000;
const GATHER_TIMEOUT_MS = 3000;
// A declined or ended tile says so this long, then clears itself.
const CLEAR_AFTER_MS = 5000;
const REASON_MAX = 200;

function requestId(r) {
  return r.request_id || r.id;
}

// Header values must be Latin-1; a reason typed with other characters keeps its meaning.
function headerSafe(text) {
  return text.replace(/[^\x20-\x7e\xa0-\xff]/g, "?");
}

export class VideoTiles {
  constructor({ root, api, store, reasonDialog, mapArea }) {
    this.root = root;
    this.mapArea = mapArea; // an enlarged tile covers it
    this.api = api;
    this.store = store;
    this.reasonDialog = reasonDialog;
    this.tiles = new Map(); // device id -> tile
    store.subscribe((kind, changed) => {
      for (const u of changed) if (this.tiles.has(u.device_id)) this.drawWatchers(this.tiles.get(u.device_id));
    });
    // An enlarged tile follows the map area as the window changes.
    new ResizeObserver(() => this.fitEnlarged()).observe(mapArea);
  }

  async askReason(unit, prefill = "") {
    const d = this.reasonDialog;
    $(".what", d).textContent = `Live view of ${unit.callsign || unit.device_id}${unit.officer ? ` (${unit.officer})` : ""}`;
    const input = $("textarea", d);
    input.value = prefill.slice(0, REASON_MAX);
    d.showModal();
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok" ? input.value.trim() : null), { once: true });
    });
  }

  // "Watch now" from an alert: the reason is prefilled with the alert, and editable.
  watchAlert(alert, kindName) {
    const unit = this.store.units.get(alert.device_id) || { device_id: alert.device_id, callsign: alert.callsign };
    return this.request(unit, `${kindName} alert: ${alert.detail}`);
  }

  // incidentId: the incident the request is for (from its unit table): a later request for the
  // same incident may be covered by the consent this one gets (rule same_incident).
  async request(unit, prefill = "", incidentId = null) {
    const current = this.tiles.get(unit.device_id);
    // A tile that is only saying how it ended makes way for a new one.
    if (current && !current.clearing) return;
    if (current) this.close(current);
    if (this.tiles.size >= MAX_TILES) {
      alertTile(this.root, `At most ${MAX_TILES} tiles at once: close one first.`);
      return;
    }
    const reason = await this.askReason(unit, prefill);
    if (!reason) return;
    const tile = this.addTile(unit, reason);
    try {
      const body = incidentId ? { reason, incident_id: incidentId } : { reason };
      const req = await this.api.post(`/api/v1/devices/${encodeURIComponent(unit.device_id)}/live-view`, body);
      tile.requestId = requestId(req);
      this.onRequest(tile, req);
      if (tile.status === "pending") this.poll(tile);
    } catch (error) {
      this.setStatus(tile, "failed", error.status === 404 ? "Live view is not available on this server." : error.message);
    }
  }

  // A live_view frame from the feed (docs/api.md, "Live view"): the camera answered one of our
  // requests, its stream started or ended, or someone started or stopped watching it.
  onFrame(frame) {
    const tile = this.tiles.get(frame.device_id);
    if (!tile) return;
    switch (frame.event) {
      case "requested":
      case "accepted":
      case "declined":
      case "expired":
        if (!frame.request_id || frame.request_id === tile.requestId) this.onRequest(tile, frame);
        break;
      case "viewer_joined":
      case "viewer_left":
        this.loadViewers(tile);
        break;
      case "stream_ended":
      case "consent_ended":
        // (A peer connection that dropped first said "failed": the frame says why.)
        if (tile.status === "playing" || tile.status === "connecting" || tile.status === "failed") {
          this.setStatus(tile, "ended", `The stream ended${frame.reason ? ` (${frame.reason.replaceAll("_", " ")})` : ""}.`);
          if (tile.pc) tile.pc.close();
        }
        break;
      default:
        break;
    }
  }

  onRequest(tile, req) {
    const status = req.status || tile.status;
    if (status === tile.status && status !== "pending") return;
    if (status === "pending") this.setStatus(tile, "pending", "Waiting for the officer to accept…");
    else if (status === "accepted") this.play(tile);
    else if (status === "declined") this.setStatus(tile, "declined", req.detail || "The officer declined live view.");
    else if (status === "expired") this.setStatus(tile, "declined", "The camera did not answer in time.");
    else this.setStatus(tile, status, req.detail || status);
  }

  // Who is watching this unit now, across every API process.
  async loadViewers(tile) {
    try {
      tile.viewers = await this.api.get(`/api/v1/devices/${encodeURIComponent(tile.deviceId)}/viewers`);
    } catch {
      tile.viewers = null;
    }
    this.drawWatchers(tile);
  }

  async poll(tile) {
    const started = Date.now();
    while (tile.status === "pending" && this.tiles.get(tile.deviceId) === tile) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      if (tile.status !== "pending" || !tile.requestId) break;
      if (Date.now() - started > REQUEST_TIMEOUT_MS) {
        this.setStatus(tile, "declined", "No answer from the camera.");
        break;
      }
      try {
        this.onRequest(tile, await this.api.get(`/api/v1/live-view/requests/${encodeURIComponent(tile.requestId)}`));
      } catch (error) {
        if (error.status === 404) break;
      }
    }
  }

  async play(tile) {
    if (tile.pc) return;
    this.setStatus(tile, "connecting", "Connecting to the video relay…");
    // No ICE servers: everything is on the force's network; a default public STUN server
    // would only cost seconds offline.
    const pc = new RTCPeerConnection({ iceServers: [] });
    tile.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => {
      tile.video.srcObject = event.streams[0] || new MediaStream([event.track]);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "disconnected") {
        this.setStatus(tile, "failed", "The stream was lost.");
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const response = await fetch(`/api/v1/whep/${encodeURIComponent(tile.deviceId)}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.api.token}`, "content-type": "application/sdp",
                   "X-Viewing-Reason": headerSafe(tile.reason) },
        body: pc.localDescription.sdp,
      });
      if (response.status !== 201) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error ? body.error.message : `the relay answered ${response.status}`);
      }
      tile.location = new URL(response.headers.get("Location"), location.origin).toString();
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
      tile.video.onplaying = () => {
        this.setStatus(tile, "playing", "Live");
        this.loadViewers(tile);
      };
    } catch (error) {
      this.setStatus(tile, "failed", error.message);
    }
  }

  addTile(unit, reason) {
    const video = h("video", { muted: true, autoplay: true, playsinline: true });
    video.muted = true;
    const tile = { deviceId: unit.device_id, reason, status: "new", video, viewers: null, pc: null, location: null };
    tile.statusEl = h("span", { class: "tile-status" });
    tile.watchersEl = h("span", { class: "tile-watchers" });
    tile.el = h("figure", { class: "tile", dataset: { deviceId: unit.device_id } },
      h("figcaption", {},
        h("strong", {}, unit.callsign || unit.device_id),
        tile.statusEl,
        h("button", { type: "button", class: "enlarge", title: "Enlarge to the map area",
                      onclick: () => this.enlarge(tile, !tile.el.classList.contains("enlarged")) }, "⤢"),
        h("button", { type: "button", class: "close", title: "Stop watching", onclick: () => this.close(tile) }, "✕")),
      video,
      h("div", { class: "tile-foot" }, h("span", { class: "muted" }, `Reason: ${reason}`), tile.watchersEl));
    this.tiles.set(unit.device_id, tile);
    this.root.append(tile.el);
    this.root.classList.remove("hidden");
    this.drawWatchers(tile);
    return tile;
  }

  setStatus(tile, status, text) {
    if (tile.status === "closed") return;
    tile.status = status;
    tile.el.dataset.status = status;
    tile.statusEl.textContent = text;
    // Declined or ended: it says so, then clears itself (closing what is left of it).
    if ((status === "declined" || status === "ended") && !tile.clearing) {
      tile.clearing = setTimeout(() => {
        if (this.tiles.get(tile.deviceId) === tile) this.close(tile);
      }, CLEAR_AFTER_MS);
    }
  }

  // Enlarged, a tile covers the map area exactly (fixed over it, following its size); a
  // second click puts it back among the tiles.
  enlarge(tile, on) {
    for (const other of this.tiles.values()) {
      if (other !== tile || !on) this.unfit(other);
    }
    if (on) {
      tile.el.classList.add("enlarged");
      this.fitEnlarged();
    }
  }

  unfit(tile) {
    tile.el.classList.remove("enlarged");
    for (const side of ["top", "left", "width", "height"]) tile.el.style.removeProperty(side);
  }

  fitEnlarged() {
    const r = this.mapArea.getBoundingClientRect();
    for (const tile of this.tiles.values()) {
      if (!tile.el.classList.contains("enlarged")) continue;
      Object.assign(tile.el.style, { top: `${r.top}px`, left: `${r.left}px`, width: `${r.width}px`, height: `${r.height}px` });
    }
  }

  drawWatchers(tile) {
    const unit = this.store.units.get(tile.deviceId);
    const others = Array.isArray(tile.viewers)
      ? [...new Set(tile.viewers.map((v) => v.viewer).filter((n) => n && n !== this.api.session.username))] : null;
    const count = unit && typeof unit.viewers === "number" ? unit.viewers : null;
    tile.watchersEl.textContent = others !== null
      ? (others.length ? `Also watching: ${others.join(", ")}` : "Nobody else is watching")
      : count !== null ? `${count} watching` : "";
  }

  // Stop watching: DELETE the WHEP session first, then close the peer connection. The other
  // way round, the relay sees the connection drop before the DELETE arrives, ends the session
  // as "connection_lost", and the DELETE finds nothing (404); the record must say the viewer
  // stopped it ("viewer_stopped").
  async close(tile) {
    clearTimeout(tile.clearing);
    if (this.tiles.get(tile.deviceId) === tile) this.tiles.delete(tile.deviceId);
    tile.el.remove();
    if (!this.tiles.size) this.root.classList.add("hidden");
    tile.status = "closed"; // a stream_ended frame or state change from now on is ours
    if (tile.location) {
      await fetch(tile.location, { method: "DELETE", headers: { Authorization: `Bearer ${this.api.token}` } })
        .catch(() => {});
    }
    if (tile.pc) tile.pc.close();
  }

  closeAll() {
    for (const tile of [...this.tiles.values()]) this.close(tile);
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

function alertTile(root, text) {
  const note = h("p", { class: "tile-note" }, text);
  root.prepend(note);
  root.classList.remove("hidden");
  setTimeout(() => note.remove(), 5000);
}
