"""The channel between the harness and an optimizer's process: messages on a UNIX socket, arrays
in shared memory.

A message is a length-prefixed JSON document. Arrays of more than :data:`INLINE_BYTES` travel
through the sender's :class:`Arena` — a ``memfd`` (anonymous memory: no file name, freed when
the last process holding it ends, killed or not) mapped by both sides, written by one — and the
message carries their offset, dtype and shape; small arrays and NumPy scalars travel inline
(base64), so a scalar keeps its dtype. Decoding accepts only numbers, strings, lists, tuples,
string-keyed dicts and numeric arrays: nothing from the optimizer's side is ever unpickled by
the harness, and a malformed message is a :class:`ProtocolError`.

The exchange is strictly alternating (one message in flight), so each side rewrites its arena
from offset 0 for every message; the receiver copies out what it keeps.
"""
from __future__ import annotations

import base64
import json
import mmap
import os
import select
import socket
import struct
import time
from types import MappingProxyType

import numpy as np

INLINE_BYTES = 1024             # arrays up to this size travel inside the message
MAX_MESSAGE = 64 * 2**20        # bytes of JSON: a larger message is a protocol error
ALIGN = 64
_HEADER = struct.Struct("<Q")


class ProtocolError(RuntimeError):
    """The other side sent something that is not a message of the protocol."""


class ChannelClosed(ProtocolError):
    """The other side closed the channel (its process ended)."""


class Arena:
    """A shared-memory segment: written by one side, read by the other."""

    def __init__(self, fd: int, size: int, writable: bool):
        self.fd, self.size, self.writable = fd, size, writable
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self.used = 0

    @classmethod
    def create(cls, size: int, name: str = "cryobench-arena") -> "Arena":
        """A new anonymous segment of ``size`` bytes (pages are allocated when touched)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size, writable=True)

    def put(self, a: np.ndarray) -> int | None:
        """Copy ``a`` in at the next aligned offset; None if it does not fit."""
        start = -(-self.used // ALIGN) * ALIGN
        if start + a.nbytes > self.size:
            return None
        np.ndarray(a.shape, a.dtype, buffer=self.map, offset=start)[...] = a
        self.used = start + a.nbytes
        return start

    def get(self, offset: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
        """A read-only view of an array the other side put at ``offset``."""
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if offset < 0 or offset + count * dtype.itemsize > self.size:
            raise ProtocolError(f"an array of {count} × {dtype} at {offset} overruns the arena")
        view = np.frombuffer(self.map, dtype, count, offset).reshape(shape)
        view.flags.writeable = False
        return view

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:             # a view is still alive: the mapping goes with it
            pass
        os.close(self.fd)


def _dtype(text) -> np.dtype:
    try:
        dtype = np.dtype(str(text))
    except TypeError:
        raise ProtocolError(f"not a dtype: {text!r}") from None
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise ProtocolError(f"only numeric arrays cross the channel, got dtype {dtype}")
    return dtype


def encode(obj, arena: Arena) -> bytes:
    """``obj`` as a message; its large arrays written into ``arena``."""
    arena.used = 0

    def enc(o):
        if o is None or isinstance(o, (bool, str)):
            return o
        if isinstance(o, np.generic):
            if o.dtype.kind not in "biufc":
                raise TypeError(f"a {type(o).__name__} cannot cross the channel")
            return {"s": [o.dtype.str, base64.b64encode(o.tobytes()).decode()]}
        if isinstance(o, (int, float)):
            return o
        if isinstance(o, np.ndarray):
            if o.dtype.kind not in "biufc":
                raise TypeError(f"an array of dtype {o.dtype} cannot cross the channel")
            offset = arena.put(o) if o.nbytes > INLINE_BYTES else None
            if offset is None:
                data = base64.b64encode(np.ascontiguousarray(o).tobytes()).decode()
                return {"a": [o.dtype.str, list(o.shape), data]}
            return {"a": [o.dtype.str, list(o.shape), offset]}
        if isinstance(o, tuple):
            return {"t": [enc(v) for v in o]}
        if isinstance(o, list):
            return [enc(v) for v in o]
        if isinstance(o, (dict, MappingProxyType)):
            if not all(isinstance(k, str) for k in o):
                raise TypeError("only dicts with string keys cross the channel")
            return {"d": {k: enc(v) for k, v in o.items()}}
        raise TypeError(f"a {type(o).__name__} cannot cross the channel")

    return json.dumps(enc(obj), separators=(",", ":")).encode()


def decode(data: bytes, arena: Arena, copy: bool):
    """The message ``data``; arrays read from ``arena`` (copied out with ``copy``, else
    read-only views valid until the other side's next message)."""
    def dec(o):
        if o is None or isinstance(o, (bool, str, int, float)):
            return o
        if isinstance(o, list):
            return [dec(v) for v in o]
        if not isinstance(o, dict) or len(o) != 1:
            raise ProtocolError("malformed message")
        (kind, v), = o.items()
        if kind == "t" and isinstance(v, list):
            return tuple(dec(x) for x in v)
        if kind == "d" and isinstance(v, dict):
            return {str(k): dec(x) for k, x in v.items()}
        if kind == "s" and isinstance(v, list) and len(v) == 2:
            dtype = _dtype(v[0])
            raw = base64.b64decode(v[1])
            if len(raw) != dtype.itemsize:
                raise ProtocolError("malformed scalar")
            return np.frombuffer(raw, dtype)[0]
        if kind == "a" and isinstance(v, list) and len(v) == 3:
            dtype, shape, where = _dtype(v[0]), v[1], v[2]
            if not isinstance(shape, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise ProtocolError("malformed array shape")
            if isinstance(where, str):
                raw = base64.b64decode(where)
                count = int(np.prod(shape, dtype=np.int64)) if shape else 1
                if len(raw) != count * dtype.itemsize:
                    raise ProtocolError("malformed inline array")
                return np.frombuffer(raw, dtype).reshape(shape).copy()
            if not isinstance(where, int) or isinstance(where, bool):
                raise ProtocolError("malformed array offset")
            view = arena.get(where, dtype, tuple(shape))
            return np.array(view) if copy else view
        raise ProtocolError("malformed message")

    try:
        return dec(json.loads(data))
    except ProtocolError:
        raise
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as exc:
        raise ProtocolError(f"malformed message: {type(exc).__name__}") from None


def send(sock: socket.socket, payload: bytes) -> None:
    """One message: its length, then its bytes."""
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            wait = deadline - time.perf_counter()
            if wait <= 0 or not select.select([sock], [], [], wait)[0]:
                raise TimeoutError
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ChannelClosed("the other side closed the channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, deadline: float | None = None) -> bytes:
    """The next message's bytes; :class:`TimeoutError` once ``deadline`` (a
    ``time.perf_counter()`` value) passes, :class:`ChannelClosed` at the end of the stream."""
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if n > MAX_MESSAGE:
        raise ProtocolError(f"a message of {n:,} bytes (at most {MAX_MESSAGE:,})")
    return _recv_exact(sock, n, deadline)
