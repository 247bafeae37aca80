"""Line charts of metric curves, without a plotting library: SVG (with labels) or PNG (curves,
axes and grid; the legend is the SVG's or the terminal's)."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

WIDTH, HEIGHT = 960, 540
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 200, 40, 50
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]

Series = Mapping[str, Sequence[tuple[float, float]]]


def _bounds(series: Series) -> tuple[float, float, float, float]:
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if y0 == y1:
        y0, y1 = y0 - abs(y0) * 0.1 - 1e-9, y1 + abs(y1) * 0.1 + 1e-9
    return x0, x1, y0, y1


def _scale(series: Series) -> tuple[object, object, tuple[float, float, float, float]]:
    x0, x1, y0, y1 = _bounds(series)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    return sx, sy, (x0, x1, y0, y1)


def svg(series: Series, *, title: str, x_label: str, y_label: str) -> str:
    sx, sy, (x0, x1, y0, y1) = _scale(series)
    assert callable(sx) and callable(sy)
    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="16">{escape(title)}</text>',
        f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{right - MARGIN_LEFT}" height="{bottom - MARGIN_TOP}" '
        'fill="none" stroke="black"/>',
    ]
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        y = y0 + (y1 - y0) * i / 5
        parts.append(f'<text x="{sx(x)}" y="{bottom + 16}" text-anchor="middle">{x:.4g}</text>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{sy(y) + 4}" text-anchor="end">{y:.4g}</text>')
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{right}" y1="{sy(y)}" y2="{sy(y)}" stroke="#ddd"/>')
    parts.append(
        f'<text x="{(MARGIN_LEFT + right) / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="16" y="{(MARGIN_TOP + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(MARGIN_TOP + bottom) / 2})">{escape(y_label)}</text>'
    )
    for n, (name, points) in enumerate(series.items()):
        r, g, b = PALETTE[n % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="rgb({r},{g},{b})" stroke-width="1.5"/>')
        legend_y = MARGIN_TOP + 14 * n + 6
        if legend_y < bottom:
            parts.append(
                f'<line x1="{right + 10}" x2="{right + 30}" y1="{legend_y}" y2="{legend_y}" '
                f'stroke="rgb({r},{g},{b})" stroke-width="2"/>'
            )
            parts.append(f'<text x="{right + 36}" y="{legend_y + 4}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def png(series: Series) -> bytes:
    sx, sy, (_, _, y0, y1) = _scale(series)
    assert callable(sx) and callable(sy)
    pixels = bytearray(b"\xff" * (WIDTH * HEIGHT * 3))

    def put(x: int, y: int, color: tuple[int, int, int]) -> None:
        if 0 <= x < WIDTH and 0 <= y < HEIGHT:
            offset = (y * WIDTH + x) * 3
            pixels[offset : offset + 3] = bytes(color)

    def line(xa: float, ya: float, xb: float, yb: float, color: tuple[int, int, int], thick: int = 1) -> None:
        steps = int(max(abs(xb - xa), abs(yb - ya))) + 1
        for i in range(steps + 1):
            t = i / steps
            x, y = round(xa + (xb - xa) * t), round(ya + (yb - ya) * t)
            for dx in range(thick):
                for dy in range(thick):
                    put(x + dx, y + dy, color)

    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM
    for i in range(6):
        y = sy(y0 + (y1 - y0) * i / 5)
        line(MARGIN_LEFT, y, right, y, (221, 221, 221))
    for xa, ya, xb, yb in (
        (MARGIN_LEFT, MARGIN_TOP, right, MARGIN_TOP),
        (MARGIN_LEFT, bottom, right, bottom),
        (MARGIN_LEFT, MARGIN_TOP, MARGIN_LEFT, bottom),
        (right, MARGIN_TOP, right, bottom),
    ):
        line(xa, ya, xb, yb, (0, 0, 0))
    for n, points in enumerate(series.values()):
        color = PALETTE[n % len(PALETTE)]
        scaled = [(sx(x), sy(y)) for x, y in points]
        for (xa, ya), (xb, yb) in itertools.pairwise(scaled):
            line(xa, ya, xb, yb, color, 2)
        if len(scaled) == 1:
            line(scaled[0][0] - 2, scaled[0][1], scaled[0][0] + 2, scaled[0][1], color, 3)
        legend_y = MARGIN_TOP + 14 * n + 6
        if legend_y < bottom:
            line(right + 10, legend_y, right + 30, legend_y, color, 2)
    raw = b"".join(b"\x00" + bytes(pixels[y * WIDTH * 3 : (y + 1) * WIDTH * 3]) for y in range(HEIGHT))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write(path: Path, series: Series, *, title: str, x_label: str, y_label: str) -> None:
    if path.suffix.lower() == ".svg":
        path.write_text(svg(series, title=title, x_label=x_label, y_label=y_label))
    else:
        path.write_bytes(png(series))
