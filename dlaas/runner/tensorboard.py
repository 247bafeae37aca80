"""Scalars from TensorBoard event files (``events.out.tfevents.*`` under LOG_DIR), read without
TensorFlow or TensorBoard: the TFRecord framing and the few protobuf fields of an Event.

TFRecord: uint64 length, uint32 CRC of the length, the record, uint32 CRC of the record (all
little-endian; the CRCs are not checked: a torn record at the end is simply waited on).
Event: wall_time (1, double), step (2, int64), summary (5). Summary: value (1, repeated).
Value: tag (1), simple_value (2, float; PyTorch and TF1 write these) or tensor (8; TF2 writes
scalars as a TensorProto of dtype float (1) or double (2), in float_val (5), double_val (6) or
tensor_content (4)).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PATTERN = "events.out.tfevents.*"
_MAX_RECORD = 64 << 20


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float
    wall_time_ns: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message; fixed64/32 as raw bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, data[pos : pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire == 5:
            yield number, wire, data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")


def _tensor_scalar(data: bytes) -> float | None:
    dtype, content, floats, doubles = 0, b"", b"", b""
    for number, wire, value in fields(data):
        if number == 1 and wire == 0:
            dtype = int(value)
        elif number == 4 and wire == 2:
            content = bytes(value)
        elif number == 5:
            floats += bytes(value) if wire in (2, 5) else b""
        elif number == 6:
            doubles += bytes(value) if wire in (1, 2) else b""
    if dtype == 1:
        raw = floats or content
        return struct.unpack("<f", raw[:4])[0] if len(raw) >= 4 else None
    if dtype == 2:
        raw = doubles or content
        return struct.unpack("<d", raw[:8])[0] if len(raw) >= 8 else None
    return None


def parse_event(data: bytes) -> list[Scalar]:
    """The scalars of one Event record."""
    wall_time, step, summaries = 0.0, 0, []
    for number, wire, value in fields(data):
        if number == 1 and isinstance(value, bytes) and wire == 1:
            wall_time = struct.unpack("<d", value)[0]
        elif number == 2 and wire == 0:
            step = int(value)
            step = step - (1 << 64) if step >= 1 << 63 else step
        elif number == 5 and wire == 2:
            summaries.append(bytes(value))
    scalars = []
    for summary in summaries:
        for number, wire, value in fields(summary):
            if number != 1 or wire != 2:
                continue
            tag, scalar = "", None
            for inner, inner_wire, inner_value in fields(bytes(value)):
                if inner == 1 and inner_wire == 2:
                    tag = bytes(inner_value).decode("utf-8", errors="replace")
                elif inner == 2 and isinstance(inner_value, bytes) and inner_wire == 5:
                    scalar = struct.unpack("<f", inner_value)[0]
                elif inner == 8 and inner_wire == 2:
                    scalar = _tensor_scalar(bytes(inner_value))
            if tag and scalar is not None:
                scalars.append(Scalar(tag, step, float(scalar), int(wall_time * 1e9)))
    return scalars


class EventFile:
    """The complete records appended to one event file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read(self) -> list[Scalar]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except OSError:
            return []
        scalars: list[Scalar] = []
        pos = 0
        while len(data) - pos >= 12:
            (length,) = struct.unpack_from("<Q", data, pos)
            if length > _MAX_RECORD:
                pos = len(data)  # not an event file we can read; skip what is there
                break
            end = pos + 12 + length + 4
            if end > len(data):
                break  # the writer has not finished this record
            with contextlib.suppress(ValueError, struct.error):
                scalars += parse_event(data[pos + 12 : pos + 12 + length])
            pos = end
        self._offset += pos
        return scalars


class EventDirectory:
    """Every event file under a directory (TensorBoard writes one per writer, often in subfolders)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[Path, EventFile] = {}

    def read(self) -> list[Scalar]:
        if self.root.is_dir():
            for path in sorted(self.root.rglob(PATTERN)):
                if path not in self._files and path.is_file():
                    self._files[path] = EventFile(path)
        scalars: list[Scalar] = []
        for reader in self._files.values():
            scalars += reader.read()
        return scalars
