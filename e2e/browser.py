"""Headless Chromium (Debian's `chromium` package) for checking static pages: the DOM after
load, and a screenshot decoded to pixels (no imaging library needed)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from e2e.images.host import HostToolError, ensure_programs

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """Debian's Chromium, installed when missing (CI may start on a fresh machine)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        try:
            ensure_programs({"chromium": "chromium"})
        except HostToolError:
            return None
        found = shutil.which("chromium")
    return found


def _run(page: Path, profile: Path, *extra: str) -> str:
    binary = chromium()
    assert binary is not None, "chromium is not installed (apt-get install -y chromium)"
    proc = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dump_dom(page: Path, profile: Path) -> str:
    return _run(page, profile, "--dump-dom")


def screenshot(page: Path, png: Path, profile: Path, size: str = "1280,1800") -> Image:
    _run(page, profile, f"--screenshot={png}", f"--window-size={size}")
    return decode_png(png.read_bytes())


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    pixels: list[tuple[int, int, int]]

    def colours(self) -> Counter[tuple[int, int, int]]:
        return Counter(self.pixels)


def decode_png(data: bytes) -> Image:
    """8-bit RGB or RGBA, non-interlaced: what Chromium writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat = 8, b""
    width = height = channels = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        method, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if method == 1:
                line[i] = (line[i] + left) & 0xFF
            elif method == 2:
                line[i] = (line[i] + up) & 0xFF
            elif method == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif method == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + predictor) & 0xFF
        pixels.extend((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        previous = line
    return Image(width, height, pixels)
