"""Framing and the plain-value codec shared by the sandbox processes.

Frames are a 4-byte big-endian length followed by UTF-8 JSON. Values cross process
boundaries in a *tagged* JSON form that only ever decodes to exact builtin types, so a
candidate can return nothing but plain data: no ``__eq__``, ``__hash__``, ``__del__`` or
``__str__`` of its own survives the trip.

This module is stdlib-only: the fork server imports it as a top-level module.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time

MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 64
_HEADER = struct.Struct(">I")
_SMALL_INT = 1 << 62


class WireError(Exception):
    """A frame could not be read or written (peer gone, too big, malformed, too late)."""


class Deadline(WireError):
    """The peer did not answer before the deadline."""


# --------------------------------------------------------------------------- framing


def _wait(fd: int, events: int, deadline: float | None) -> None:
    poller = select.poll()
    poller.register(fd, events)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise Deadline("deadline passed")
        if poller.poll(None if left is None else max(1, int(left * 1000))):
            return


def write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    view = memoryview(data)
    while view:
        if deadline is not None:
            _wait(fd, select.POLLOUT, deadline)
        try:
            n = os.write(fd, view[: 1 << 16])
        except BlockingIOError:
            continue
        except OSError as exc:
            raise WireError(f"write failed: {exc}") from None
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:  # without one, a blocking read (the caller may use an alarm)
            _wait(fd, select.POLLIN, deadline)
        try:
            chunk = os.read(fd, min(n - got, 1 << 20))
        except BlockingIOError:
            continue
        except OSError as exc:
            raise WireError(f"read failed: {exc}") from None
        if not chunk:
            raise WireError("peer closed the channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def pack(obj) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if len(data) > MAX_FRAME:
        raise WireError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(data)) + data


def unpack(record: bytes):
    """One whole frame received as a single record (SOCK_SEQPACKET)."""
    if len(record) < _HEADER.size or _HEADER.unpack(record[: _HEADER.size])[0] != len(record) - _HEADER.size:
        raise WireError("truncated record")
    return json.loads(record[_HEADER.size:].decode("utf-8", "surrogatepass"))


def send(fd: int, obj, deadline: float | None = None) -> None:
    write_all(fd, pack(obj), deadline)


def recv(fd: int, deadline: float | None = None, max_frame: int = MAX_FRAME):
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > max_frame:
        raise WireError(f"frame of {size} bytes exceeds {max_frame}")
    try:
        return json.loads(_read_exact(fd, size, deadline).decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        raise WireError(f"malformed frame: {type(exc).__name__}") from None


# --------------------------------------------------------------------------- values
# JSON scalars stand for themselves (None, bool, small int, float, str); every container
# and every other scalar is a list whose first item is a one-letter tag.


def encode(x, depth: int = 0):
    """Plain builtin value -> tagged JSON. Subclasses are reduced to their builtin base
    through the base type's own methods, so an override cannot change what is sent."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is float:
        return x
    if t is int:
        return x if -_SMALL_INT < x < _SMALL_INT else ["i", int.__format__(x, "x")]
    d = depth + 1
    if t is list:
        return ["l", [encode(v, d) for v in x]]
    if t is tuple:
        return ["t", [encode(v, d) for v in x]]
    if t is dict:
        return ["d", [[encode(k, d), encode(v, d)] for k, v in x.items()]]
    if t is set or t is frozenset:
        return ["s" if t is set else "f", [encode(v, d) for v in x]]
    if t is bytes or t is bytearray:
        return ["b" if t is bytes else "B", bytes.hex(x)]
    if t is complex:
        return ["c", complex.real.__get__(x), complex.imag.__get__(x)]
    # subclasses of builtins: read the builtin value through the base class
    if isinstance(x, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(x)
    if isinstance(x, int):
        return encode(int.__index__(x), depth)
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, (bytes, bytearray)):
        return ["b", bytes.hex(x)]
    if isinstance(x, list):
        return ["l", [encode(v, d) for v in list.__iter__(x)]]
    if isinstance(x, tuple):
        return ["t", [encode(v, d) for v in tuple.__iter__(x)]]
    if isinstance(x, dict):
        return ["d", [[encode(k, d), encode(v, d)] for k, v in dict.items(x)]]
    if isinstance(x, set):
        return ["s", [encode(v, d) for v in set.__iter__(x)]]
    if isinstance(x, frozenset):
        return ["f", [encode(v, d) for v in frozenset.__iter__(x)]]
    if isinstance(x, complex):
        return ["c", complex.real.__get__(x), complex.imag.__get__(x)]
    raise TypeError(f"cannot return a {t.__qualname__} from the sandbox (plain builtin values only)")


_SCALARS = (type(None), bool, int, float, str)


def decode(v, depth: int = 0):
    """Tagged JSON -> fresh exact builtins. Anything unexpected raises ValueError."""
    if type(v) in _SCALARS:
        return v
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if type(v) is not list or not v or type(v[0]) is not str:
        raise ValueError("malformed value")
    tag, d = v[0], depth + 1
    if tag in "ltsf" and len(v) == 2 and type(v[1]) is list:
        items = [decode(e, d) for e in v[1]]
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d" and len(v) == 2 and type(v[1]) is list:
        out = {}
        for pair in v[1]:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict item")
            out[decode(pair[0], d)] = decode(pair[1], d)
        return out
    if tag == "i" and len(v) == 2 and type(v[1]) is str:
        return int(v[1], 16)
    if tag in "bB" and len(v) == 2 and type(v[1]) is str:
        raw = bytes.fromhex(v[1])
        return raw if tag == "b" else bytearray(raw)
    if tag == "c" and len(v) == 3 and type(v[1]) is float and type(v[2]) is float:
        return complex(v[1], v[2])
    raise ValueError(f"unknown value tag {tag[:8]!r}")
