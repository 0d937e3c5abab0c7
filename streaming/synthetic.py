"""A synthetic camera picture: moving stripes, a label and a clock, and the frame number
drawn as a row of black and white blocks that survives lossy compression.

Drawn straight into the YUV planes with bytes operations (no numpy, no imaging
library): about a millisecond per 640x480 frame. The simulator's cameras publish it,
and the relay's tests and benchmark read the frame number back from decoded pictures
(:func:`read_frame_number`) to match what arrived with what was sent.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from datetime import datetime, timezone

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["SyntheticVideoTrack", "read_frame_number"]

_TIME_BASE = fractions.Fraction(1, 90000)
_BAND = 40  # rows of the top (frame number) and bottom (label) bands
_CODE_TOP, _CODE_ROWS = 8, 24  # the blocks' rows inside the top band
_BITS = 24  # frame number bits: 16.7 million frames, 6 days at 30 fps
_BLOCKS = _BITS + 2  # a white block before the bits and a black one after, to check a read
_BLACK, _WHITE = 16, 235  # video-range luma
_TEXT_SCALE = 3

# 5x7 glyphs, one 5-bit row each, most significant bit on the left.
_GLYPHS: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), "-": (0, 0, 0, 0x1F, 0, 0, 0), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
}


def _block_width(width: int) -> int:
    return max(2, (width - 16) // _BLOCKS)


class SyntheticVideoTrack(MediaStreamTrack):
    """A live video track of ``width`` x ``height`` at ``fps``, paced in real time.

    Each picture shows diagonal stripes moving to the right, the frame number as blocks
    along the top, and ``label`` (for example the device id), the UTC time and the frame
    number along the bottom. ``on_frame(number, wall_clock)`` is called as each frame is
    handed to the sender (before encoding), for latency measurements. Frame timestamps
    are exact multiples of 90000 / fps ticks.
    """

    kind = "video"

    def __init__(self, *, label: str = "", width: int = 640, height: int = 480, fps: int = 30,
                 on_frame: Callable[[int, float], None] | None = None) -> None:
        super().__init__()
        if width % 2 or height % 2 or height < 2 * _BAND + 8 or width < 16 + 2 * _BLOCKS:
            raise ValueError("width and height must be even and at least 68x88")
        self.label = label.upper()
        self.width, self.height, self.fps = width, height, fps
        self.frames_sent = 0
        self._on_frame = on_frame
        self._start: float | None = None
        period = width + 16  # one row's worth plus a shift: a flat repeat draws diagonals
        stripe = bytes(200 if (i // 40) % 2 else 60 for i in range(period))
        repeats = (width * height) // period + 3
        self._stripes = stripe * repeats
        self._period = period
        self._black_band = bytes([_BLACK]) * (_BAND * width)
        self._chroma = bytes([128]) * ((width // 2) * (height // 2))
        self._glyph_rows: dict[tuple[str, int], bytes] = {}

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        number = self.frames_sent
        if self._start is None:
            self._start = loop.time()
        delay = self._start + number / self.fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = self.draw(number)
        self.frames_sent += 1
        if self._on_frame is not None:
            self._on_frame(number, time.time())
        return frame

    def draw(self, number: int, *, now: datetime | None = None) -> av.VideoFrame:
        """The picture for frame ``number`` (also usable without a peer connection)."""
        w, h = self.width, self.height
        offset = (self._period - (number * 4) % self._period) % self._period
        luma = bytearray(self._stripes[offset:offset + w * h])
        luma[:_BAND * w] = self._black_band
        luma[(h - _BAND) * w:] = self._black_band
        self._draw_code(luma, number)
        clock = (now or datetime.now(timezone.utc)).strftime("%H:%M:%S.%f")[:-3]
        self._draw_text(luma, f"{self.label} {clock} #{number}".strip(), top=h - _BAND + 10, left=8)
        frame = av.VideoFrame(w, h, "yuv420p")
        _fill(frame.planes[0], luma, w, h)
        _fill(frame.planes[1], self._chroma, w // 2, h // 2)
        _fill(frame.planes[2], self._chroma, w // 2, h // 2)
        frame.pts = round(number * 90000 / self.fps)
        frame.time_base = _TIME_BASE
        return frame

    def _draw_code(self, luma: bytearray, number: int) -> None:
        w = self.width
        bw = _block_width(w)
        bits = [1] + [(number >> (_BITS - 1 - i)) & 1 for i in range(_BITS)] + [0]
        row = bytearray([_BLACK]) * w
        for i, bit in enumerate(bits):
            x = 8 + i * bw
            row[x + 1:x + bw - 1] = bytes([_WHITE if bit else _BLACK]) * (bw - 2)
        for y in range(_CODE_TOP, _CODE_TOP + _CODE_ROWS):
            luma[y * w:(y + 1) * w] = row

    def _draw_text(self, luma: bytearray, text: str, *, top: int, left: int) -> None:
        w = self.width
        advance = 6 * _TEXT_SCALE
        text = text[:max(0, (w - left) // advance)]
        for gy in range(7):
            line = b"".join(self._glyph_row(ch, gy) for ch in text)
            for dy in range(_TEXT_SCALE):
                start = (top + gy * _TEXT_SCALE + dy) * w + left
                luma[start:start + len(line)] = line

    def _glyph_row(self, ch: str, gy: int) -> bytes:
        key = (ch, gy)
        cached = self._glyph_rows.get(key)
        if cached is None:
            bits = _GLYPHS.get(ch, _GLYPHS["?"])[gy]
            pixels = [_WHITE if bits & (0x10 >> gx) else _BLACK for gx in range(5)] + [_BLACK]
            cached = bytes(p for p in pixels for _ in range(_TEXT_SCALE))
            self._glyph_rows[key] = cached
        return cached


def _fill(plane: av.video.plane.VideoPlane, data: bytes | bytearray, width: int, height: int) -> None:
    stride = plane.line_size
    if stride == width:
        plane.update(bytes(data))
        return
    pad = bytes(stride - width)
    plane.update(b"".join(bytes(data[y * width:(y + 1) * width]) + pad for y in range(height)))


def read_frame_number(frame: av.VideoFrame) -> int | None:
    """The frame number a :class:`SyntheticVideoTrack` drew into ``frame``, or None if
    the blocks cannot be read (not a synthetic picture, or damaged)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    stride = plane.line_size
    data = bytes(plane)
    bw = _block_width(frame.width)
    y0 = _CODE_TOP + _CODE_ROWS // 2 - 2
    values = []
    for i in range(_BLOCKS):
        x0 = 8 + i * bw + bw // 2 - 1
        total = sum(data[(y0 + dy) * stride + x0 + dx] for dy in range(4) for dx in range(2))
        values.append(total / 8)
    if values[0] < 128 or values[-1] >= 128:
        return None
    number = 0
    for v in values[1:-1]:
        number = (number << 1) | (1 if v >= 128 else 0)
    return number
