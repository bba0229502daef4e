"""Small helpers shared by test folders (imported as ``tests.support``: the repository root is on the path)."""

from __future__ import annotations

import socket
import struct
import zlib


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking RGB PNG of a few dozen bytes whose header declares ``width`` × ``height`` (correct CRCs):
    a decompression bomb is exactly this."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = b""
    for kind, data in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 64)), (b"IEND", b"")):
        chunks += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunks
