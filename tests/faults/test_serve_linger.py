"""Issue 19, class 2 (serve part): oversized uploads get their 413 even under ~200 concurrent connections.

A server that answers 413 and closes while the client is still sending leaves unread bytes in the socket's receive
buffer; closing such a socket makes the kernel send a TCP reset, and the client sees "connection reset" instead of
the answer. Alone, a client usually wins the race; with 200 of them at once most lose it. The service drains what
is still coming (bounded in bytes and time, as nginx's lingering close is) before it closes. Real ``imgcls serve``
process on 127.0.0.1, real sockets.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.faults

CONNECTIONS = 200
OVER = 4  # bodies of 4x the server's --max-bytes: over the cap, well under the drain bound


@pytest.fixture(scope="module")
def server(tmp_path_factory, kit):
    with kit.served_lenet5(tmp_path_factory.mktemp("linger")) as served:
        yield served


async def _upload(port: int, body: bytes, declare: bool) -> str:
    """One oversized POST, written in full and then read, as simple clients do: the status, or what broke."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        framing = f"Content-Length: {len(body)}" if declare else "Transfer-Encoding: chunked"
        writer.write(f"POST /predict HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode())
        step = 16 * 1024
        for i in range(0, len(body), step):
            part = body[i : i + step]
            writer.write(part if declare else b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.002)  # a client on a real network: still sending when the server has answered
        if not declare:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 60)
        writer.close()
        return head.split()[1].decode()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__


async def _burst(port: int, size: int, declare: bool) -> list[str]:
    body = b"\0" * size
    return await asyncio.gather(*(_upload(port, body, declare) for _ in range(CONNECTIONS)))


@pytest.mark.parametrize(
    "declare", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["content-length", "chunked"]
)
def test_oversized_uploads_get_413_under_200_connections(server, declare, figure):
    t0 = time.perf_counter()
    answers = asyncio.run(_burst(server.port, OVER * server.max_bytes, declare))
    counts = {a: answers.count(a) for a in set(answers)}
    assert counts == {"413": CONNECTIONS}, counts
    figure(f"serve_413_under_load_{'declared' if declare else 'chunked'}",
           {"connections": CONNECTIONS, "answers": counts, "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
