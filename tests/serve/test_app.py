"""The HTTP service on a real uvicorn server: good images, every hostile request of issue 5, a burst."""

from __future__ import annotations

import asyncio
import io
import json
import socket

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.support import png_declaring

from imgcls.serve import sniff_image_type


def _raw_get(url: str, target: str) -> int:
    """Send ``GET target`` byte for byte (clients normalise ``..`` away) and return the status code."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(64).decode("latin-1")
    return int(head.split()[1])


@pytest.fixture(scope="module")
def client(served):
    server, _, _ = served
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_health_and_model(served, client):
    _, predictor, _ = served
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["name"] == predictor.name and info["classes"] == [f"class_{i}" for i in range(6)]
    assert info["input_size"] == [3, 32, 32] and info["sha256"] == predictor.sha256


def test_multipart_and_raw_uploads_answer_like_the_predictor(served, client):
    _, predictor, images = served
    expected = predictor.predict(images[:3], topk=5)
    for path, want in zip(images[:3], expected, strict=True):
        data = path.read_bytes()
        multipart = client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
        # Raw body with a lying Content-Type: the type is sniffed from the bytes.
        raw = client.post("/predict", content=data, headers={"content-type": "text/plain"})
        for response in (multipart, raw):
            assert response.status_code == 200, response.text
            got = response.json()["predictions"]
            assert [p["index"] for p in got] == [p.index for p in want.predictions]
            assert [p["label"] for p in got] == [p.label for p in want.predictions]
            assert np.allclose([p["probability"] for p in got], [p.probability for p in want.predictions], atol=1e-5)


def test_topk_and_formats(served, client):
    _, _, images = served
    png = io.BytesIO()
    Image.open(images[0]).convert("RGBA").save(png, format="PNG")
    response = client.post("/predict?topk=2", content=png.getvalue())
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    assert client.post("/predict?topk=0", content=png.getvalue()).status_code == 422


@pytest.mark.faults
def test_hostile_requests_get_clear_4xx(served, client):
    _, _, images = served
    jpeg = images[0].read_bytes()
    cases = {
        "empty body": (client.post("/predict", content=b""), 400, "empty"),
        "text as jpeg": (
            client.post("/predict", content=b"hello, world" * 10, headers={"content-type": "image/jpeg"}),
            415,
            "not an image",
        ),
        "html upload": (client.post("/predict", files={"file": ("x.jpg", b"<html></html>", "image/jpeg")}), 415, ""),
        "truncated jpeg": (client.post("/predict", content=jpeg[: len(jpeg) // 2]), 400, "truncated"),
        "jpeg magic only": (client.post("/predict", content=b"\xff\xd8\xff\xe0" + b"\x00" * 200), 400, ""),
        "pixel bomb": (client.post("/predict", content=png_declaring(30000, 30000)), 413, "too large"),
        "no file in form": (client.post("/predict", files={"note": (None, b"no file")}), 400, "exactly one file"),
        "two files": (
            client.post("/predict", files=[("a", ("a.jpg", jpeg, "image/jpeg")), ("b", ("b.jpg", jpeg, "image/jpeg"))]),
            400,
            "",
        ),
        "declared too large": (client.post("/predict", content=b"\xff" * (300 * 1024)), 413, "exceeds"),
    }
    for name, (response, status, words) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and words in detail and "\n" not in detail, (name, detail)


@pytest.mark.faults
def test_chunked_body_is_cut_at_the_cap(served):
    server, _, _ = served
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(4096):  # would be 64 MiB; the server stops reading after 256 KiB
            sent += 16 * 1024
            yield b"\x89PNG\r\n\x1a\n" + b"\x00" * (16 * 1024 - 8)

    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            response = c.post("/predict", content=chunks())
        assert response.status_code == 413 and "exceeds" in response.json()["detail"]
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered 413 and closed the connection while the client was still sending
    assert sent < 8 << 20  # far short of the 64 MiB the client wanted to send


def test_only_the_fixed_static_files_are_served(served, client):
    server, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    for target in (
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2f..%2fapp.py",
        "/../../../../etc/passwd",
        "/static/",
        "/static/index.html/..",
        "/static/app.py",
        "/static//etc/passwd",
        "/docs",
        "/openapi.json",
    ):
        assert _raw_get(server.url, target) == 404, target


def test_sniffing():
    assert sniff_image_type(b"\xff\xd8\xff\xdb...") == "JPEG"
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_image_type(b"GIF89a") == "GIF"
    assert sniff_image_type(b"<svg xmlns=...>") is None
    assert sniff_image_type(b"") is None


def test_a_burst_is_answered_in_batches(served, kit):
    server, predictor, images = served
    bodies = [p.read_bytes() for p in images]
    before = httpx.get(server.url + "/health").json()

    async def burst(n: int) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(c.post("/predict", content=bodies[i % len(bodies)]) for i in range(n)))

    responses = asyncio.run(burst(200))
    assert [r.status_code for r in responses] == [200] * 200
    expected = [r.predictions[0].index for r in predictor.predict(images, topk=1)]
    assert [r.json()["predictions"][0]["index"] for r in responses] == [expected[i % 6] for i in range(200)]
    after = httpx.get(server.url + "/health").json()
    images_served = after["images"] - before["images"]
    batches = after["batches"] - before["batches"]
    assert images_served == 200
    assert batches < 200 and after["largest_batch"] > 1  # requests were stacked into shared forward passes


def test_head_answers_like_get_without_a_body(served, client):
    for route in ("/", "/health", "/model", "/static/app.js"):
        head, get = client.head(route), client.get(route)
        assert head.status_code == 200 == get.status_code, route
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_multilabel_service_answers_the_thresholded_label_set(tmp_path, kit):
    from tests.serve.conftest import LIMITS, Server
    from tests.support import free_port

    from imgcls.inference import Predictor
    from imgcls.serve import create_app

    run = kit.write_run(tmp_path / "ml", num_classes=3, task="multilabel")
    meta = json.loads((run / "model.json").read_text())
    meta["thresholds"] = [0.0, 1.0, 0.5]
    (run / "model.json").write_text(json.dumps(meta))
    predictor = Predictor.from_run(run)
    image = kit.write_images(tmp_path / "images", 1)[0]
    with Server(create_app(predictor, LIMITS), free_port()) as server:
        answer = httpx.post(server.url + "/predict?topk=5", content=image.read_bytes(), timeout=30).json()
        info = httpx.get(server.url + "/model", timeout=30).json()
    expected = predictor.predict([image], topk=5)[0]
    assert answer["labels"] == list(expected.labels) and "class_0" in answer["labels"]
    assert "class_1" not in answer["labels"] and len(answer["predictions"]) == 3  # 3 classes: never "top-5"
    assert info["thresholds"] == [0.0, 1.0, 0.5] and info["task"] == "multilabel"
