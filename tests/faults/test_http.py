"""Scenario 9: the HTTP service under hostile and heavy traffic, on the real ``imgcls serve`` process (127.0.0.1).

Oversized bodies, lying Content-Type, multipart floods, slow clients (one header byte at a time, slowloris
style: they must not stall anyone else), path traversal on the static routes, and a soak of concurrent
requests (a mix of good images and hostile ones): no 5xx ever, no traversal ever answered with a file, and the
server's resident memory (``VmRSS`` of its process) bounded over the soak.
"""

from __future__ import annotations

import asyncio
import io
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.support import png_declaring

pytestmark = [pytest.mark.faults, pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")]

TRAVERSALS = (
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/%2e%2e%2fapp.py",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%252e%252e/%252e%252e/etc/passwd",
    "/..%5c..%5cetc%5cpasswd",
    "/static/..\\..\\app.py",
    "/../../../../etc/passwd",
    "/static//etc/passwd",
    "//etc/passwd",
    "/static/app.js/../../../etc/passwd",
    "/static/app.js%00.png",
    "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/static/index.html",
    "/static/",
    "/serve/app.py",
    "/imgcls/serve/app.py",
    "/docs",
    "/openapi.json",
)


def _png(rng: np.random.Generator, w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, kit):
    with kit.served_lenet5(tmp_path_factory.mktemp("http")) as served:
        yield served


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _raw(url: str, request: bytes, timeout: float = 20) -> tuple[int, bytes]:
    """Send `request` byte for byte (clients normalise paths) and return (status, whole response)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    return int(data.split(b" ", 2)[1]), data


def test_oversized_and_lying_bodies(server, client):
    rng = np.random.default_rng(0)
    png = _png(rng)
    # Lying Content-Type in both directions: the bytes decide.
    assert client.post("/predict", content=png, headers={"content-type": "text/plain"}).status_code == 200
    assert (
        client.post("/predict", content=b"GIF89a" + b"<html>" * 40, headers={"content-type": "image/gif"}).status_code
        == 400
    )
    lied = client.post("/predict", files={"f": ("cat.png", b"<!DOCTYPE html><script>x</script>", "image/png")})
    assert lied.status_code == 415
    # Declared too large: refused before a byte of the body is read.
    declared = server.max_bytes * 40
    status, _ = _raw(
        server.url,
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 413
    # Lying Content-Length (says small, sends more): HTTP framing reads only what was declared.
    status, _ = _raw(
        server.url,
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n" + png,
    )
    assert status == 400  # 10 bytes: a PNG signature and nothing else, refused as a broken PNG
    assert client.post("/predict", content=png_declaring(40000, 40000)).status_code == 413
    assert client.get("/health").status_code == 200


def test_multipart_floods_are_refused_cheaply(server, client):
    png = _png(np.random.default_rng(1))
    many_fields = {f"f{i}": str(i) for i in range(2000)}
    assert client.post("/predict", data=many_fields, files={"file": ("a.png", png, "image/png")}).status_code == 400
    many_files = [("file", (f"{i}.png", png[:64], "image/png")) for i in range(200)]
    assert client.post("/predict", files=many_files).status_code in (400, 413)
    boundary = "xyz"
    unterminated = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    assert client.post("/predict", content=unterminated + png, headers=headers).status_code == 400
    tiny_parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="p{i}"\r\n\r\n\r\n' for i in range(5000)
    )
    response = client.post("/predict", content=(tiny_parts + f"--{boundary}--\r\n").encode(), headers=headers)
    assert response.status_code in (400, 413)
    assert client.post("/predict", content=png).status_code == 200


def test_slow_clients_do_not_stall_others(server, client):
    png = _png(np.random.default_rng(2))
    stop = threading.Event()
    opened, tried = [], threading.Semaphore(0)

    def slowloris():
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            opened.append(s)
        except OSError:
            return
        finally:
            tried.release()
        request = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Pad: " + b"a" * 1000
        for byte in request:
            if stop.is_set():
                break
            try:
                s.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)  # a header byte every 200 ms, forever from the server's point of view

    threads = [threading.Thread(target=slowloris, daemon=True) for _ in range(64)]
    for t in threads:
        t.start()
    try:
        for _ in threads:  # every client has connected or failed (a loaded machine may take seconds to start them)
            assert tried.acquire(timeout=60)
        time.sleep(1.0)  # each has sent a few header bytes
        assert len(opened) == 64
        answers = [client.post("/predict", content=png, timeout=30).status_code for _ in range(20)]
        assert answers == [200] * 20
        assert client.get("/", timeout=30).status_code == 200
    finally:
        stop.set()
        for s in opened:
            s.close()
        for t in threads:
            t.join(timeout=5)


def test_path_traversal_never_serves_a_file(server, figure):
    successes = 0
    for target in TRAVERSALS:
        status, data = _raw(server.url, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        body = data.split(b"\r\n\r\n", 1)[-1]
        leaked = b"root:" in body or b"import " in body or b"def " in body
        successes += leaked
        assert status in (400, 404) and not leaked, (target, status)
    figure("traversal", {"attempts": len(TRAVERSALS), "successes": successes})


def _soak(url: str, total: int, concurrency: int, bodies: list[tuple[bytes, int]]) -> dict:
    """`total` POSTs from `concurrency` workers; returns status counts and per-request latencies."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wrong: list[tuple[int, int]] = []

    async def worker(start: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            for i in range(start, total, concurrency):
                body, expected = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                r = await c.post("/predict", content=body)
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != expected:
                    wrong.append((r.status_code, expected))

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))

    asyncio.run(main())
    latencies.sort()
    return {
        "statuses": statuses,
        "wrong": wrong,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def _mixed_bodies() -> list[tuple[bytes, int]]:
    """Nine good images (200) for each hostile one: text (415), truncated (400), bomb (413)."""
    rng = np.random.default_rng(3)
    good = [(_png(rng, int(rng.integers(24, 96)), int(rng.integers(24, 96))), 200) for _ in range(27)]
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    hostile = [(b"hello" * 20, 415), (jpeg.getvalue()[:400], 400), (png_declaring(30000, 30000), 413)]
    return [x for k in range(3) for x in [*good[9 * k : 9 * k + 9], hostile[k]]]


def test_a_short_soak_has_no_5xx(server):
    result = _soak(server.url, total=320, concurrency=32, bodies=_mixed_bodies())
    assert not any(code >= 500 for code in result["statuses"]), result["statuses"]
    assert result["wrong"] == []


@pytest.mark.slow
def test_soak_10000_requests_at_32_concurrent(server, kit, figure):
    bodies = _mixed_bodies()
    _soak(server.url, total=500, concurrency=32, bodies=bodies)  # warm-up: allocator pools, thread stacks
    rss_before = kit.vm_rss_kib(server.proc.pid)
    first = _soak(server.url, total=5_000, concurrency=32, bodies=bodies)
    rss_half = kit.vm_rss_kib(server.proc.pid)
    second = _soak(server.url, total=5_000, concurrency=32, bodies=bodies)
    rss_after = kit.vm_rss_kib(server.proc.pid)
    statuses = {
        c: first["statuses"].get(c, 0) + second["statuses"].get(c, 0)
        for c in {**first["statuses"], **second["statuses"]}
    }
    result = {
        "statuses": statuses,
        "wrong": first["wrong"] + second["wrong"],
        "p50_ms": max(first["p50_ms"], second["p50_ms"]),
        "p99_ms": max(first["p99_ms"], second["p99_ms"]),
    }
    fivexx = sum(n for code, n in result["statuses"].items() if code >= 500)
    assert fivexx == 0, result["statuses"]
    assert result["wrong"] == []
    growth_mib = (rss_after - rss_before) / 1024
    assert growth_mib < 64, f"resident memory grew by {growth_mib:.1f} MiB over 10,000 requests"
    figure(
        "soak",
        {
            "requests": 10_000,
            "concurrency": 32,
            "statuses": {str(k): v for k, v in sorted(result["statuses"].items())},
            "p50_ms": round(result["p50_ms"], 1),  # the worse of the two halves
            "p99_ms": round(result["p99_ms"], 1),
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_half_mib": round(rss_half / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1),
            "rss_growth_mib": round(growth_mib, 1),
            "bound_mib": 64,
        },
    )
