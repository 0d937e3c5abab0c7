"""The simulated cameras' video uplink: a synthetic picture published over WHIP (RFC 9725).

The fleet loop is synchronous (one thread drives every MQTT connection); WebRTC needs
asyncio, so :class:`VideoUplink` runs its own event loop on a thread of its own. The fleet
loop calls :meth:`~VideoUplink.start` and :meth:`~VideoUplink.stop` (thread-safe), and reads
what happened with :meth:`~VideoUplink.changes` (device id, live or not), which is where the
two threads meet. A start after the camera accepted a request dials in at once: its reply
may still be on its way through the broker, and the API's WHIP endpoint waits for it to be
recorded rather than refuse (``services.live_view.LiveView``); a ``403`` is final. (Its
officer's ``watch_me`` has no such race: the API tells the camera to dial in once the consent
is on record.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiortc import RTCPeerConnection

from streaming.client import ExchangeRefused, HttpAnswer, http_end_session, http_exchange, start_publisher
from streaming.synthetic import SyntheticVideoTrack

__all__ = ["VideoUplink", "load_secrets"]

log = logging.getLogger(__name__)

_CHANGES_MAX = 10_000


def load_secrets(path: Path) -> dict[str, str]:
    """Device secrets from a JSON file ``{"device_id": "secret", ...}`` (kept out of the repo)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: expected a JSON object of device id -> secret")
    return dict(data)


@dataclass
class _Stream:
    pc: RTCPeerConnection
    location: str | None = None


class VideoUplink:
    """WHIP publishers for simulated cameras, to ``api_url`` with each device's secret."""

    def __init__(self, *, api_url: str, secrets: dict[str, str], labels: dict[str, str] | None = None,
                 width: int = 320, height: int = 240, fps: int = 15) -> None:
        # A small picture by default: every live simulated camera encodes its own (about a
        # fifth of a core for 640x480 at 30 fps with aiortc's VP8 encoder).
        self._picture = (width, height, fps)
        self._api_url = api_url.rstrip("/")
        self._secrets = secrets  # may be filled while running (the demo provisions as it goes)
        self.labels: dict[str, str] = labels or {}  # drawn on each camera's picture
        # Bounded: the fleet loop drains it every pump; if it ever fell this far behind, the
        # oldest changes go (a unit's live flag is then corrected by its next change).
        self._changes: deque[tuple[str, bool]] = deque(maxlen=_CHANGES_MAX)
        self._streams: dict[str, _Stream] = {}
        self._starting: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="video-uplink", daemon=True)
        self._stopped: asyncio.Event | None = None
        self._http: httpx.AsyncClient | None = None

    def can_stream(self, device_id: str) -> bool:
        return device_id in self._secrets

    # called from the fleet loop's thread

    def open(self) -> "VideoUplink":
        self._thread.start()
        self._ready.wait(10)
        return self

    def start(self, device_id: str) -> None:
        if self._loop is not None and self.can_stream(device_id):
            self._loop.call_soon_threadsafe(self._begin, device_id)

    def stop(self, device_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._end, device_id)

    def changes(self) -> list[tuple[str, bool]]:
        out = []
        while self._changes:
            out.append(self._changes.popleft())
        return out

    def close(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(15)

    @property
    def live(self) -> int:
        return len(self._streams)

    # the uplink's own loop

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with httpx.AsyncClient(timeout=15) as http:
            self._http = http
            self._ready.set()
            await self._stopped.wait()
            for device_id in list(self._streams):
                await self._unpublish(device_id)

    def _begin(self, device_id: str) -> None:
        if device_id in self._streams or device_id in self._starting:
            return
        self._starting.add(device_id)
        asyncio.get_running_loop().create_task(self._publish(device_id))

    def _end(self, device_id: str) -> None:
        asyncio.get_running_loop().create_task(self._unpublish(device_id))

    async def _publish(self, device_id: str) -> None:
        try:
            await self._try_publish(device_id)
        except Exception as error:  # the API may be away: the camera stays off-air
            log.warning("video uplink for %s failed: %s", device_id, error)
        finally:
            self._starting.discard(device_id)

    async def _try_publish(self, device_id: str) -> None:
        assert self._http is not None
        http, url, secret = self._http, f"{self._api_url}/api/v1/whip/{device_id}", self._secrets[device_id]
        width, height, fps = self._picture
        track = SyntheticVideoTrack(label=self.labels.get(device_id, device_id), width=width, height=height, fps=fps)
        answers: list[HttpAnswer] = []

        async def exchange(offer_sdp: str) -> str:
            answers.append(await http_exchange(url, offer_sdp, token=secret, client=http))
            return answers[-1].answer_sdp

        try:
            # No ICE servers (the client's default; aiortc would add a public STUN server).
            pc = await start_publisher(track=track, exchange=exchange)  # closes its connection if refused
        except ExchangeRefused as refused:
            log.info("WHIP for %s refused: %s %s", device_id, refused.status, refused.body[:200])
            return
        stream = _Stream(pc, location=answers[-1].location)
        self._streams[device_id] = stream

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and self._streams.get(device_id) is stream:
                del self._streams[device_id]
                self._changes.append((device_id, False))
                await pc.close()

        self._changes.append((device_id, True))

    async def _unpublish(self, device_id: str) -> None:
        stream = self._streams.pop(device_id, None)
        if stream is None:
            return
        self._changes.append((device_id, False))
        if stream.location and self._http is not None:
            with contextlib.suppress(httpx.HTTPError):
                # RFC 9725: DELETE on the session's URL ends it (a 404 means it had ended).
                await http_end_session(stream.location, token=self._secrets[device_id], client=self._http)
        await stream.pc.close()
