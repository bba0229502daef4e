"""``POST /explain`` on a real uvicorn server (the answer, its limits) and the page's Grad-CAM overlay in real
headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.serve.conftest import LIMITS, Server
from tests.serve.test_page import _wait_for, browser  # noqa: F401  (the fixture, used by the page test)
from tests.support import free_port, png_declaring

from imgcls.inference import Predictor
from imgcls.report.anatomy import overlay
from imgcls.serve import ServeLimits, create_app


def _decoded(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["overlay"]))).convert("RGB"))


@pytest.fixture(scope="module")
def client(served):
    server, _, _ = served
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_explain_answers_the_prediction_and_the_overlay_of_grad_cam(served, client):
    _, predictor, images = served
    response = client.post("/explain", files={"file": ("photo.jpg", images[0].read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = predictor.predict([images[0]], topk=5)[0].predictions
    assert [p["index"] for p in answer["predictions"]] == [p.index for p in expected]
    assert answer["class"]["index"] == expected[0].index and answer["layer"] == "s4"  # lenet5's registry layer
    (same,) = predictor.explain([images[0]], occlusion=False, channels=0)
    assert (answer["width"], answer["height"]) == (32, 32)
    assert np.array_equal(_decoded(answer), overlay(same.image, same.cam))  # PNG: lossless


def test_explain_a_chosen_class_and_refusals(served, client):
    _, _, images = served
    data = images[1].read_bytes()
    chosen = client.post("/explain?class=class_4", content=data)
    assert chosen.status_code == 200 and chosen.json()["class"]["label"] == "class_4"
    cases = {
        "unknown class": (client.post("/explain?class=zebra", content=data), 400, "class zebra: not a class"),
        "not an image": (client.post("/explain", content=b"hello, world" * 10), 415, "not an image"),
        "pixel bomb": (client.post("/explain", content=png_declaring(30000, 30000)), 413, "too large"),
        "body over the cap": (client.post("/explain", content=b"\xff" * (300 * 1024)), 413, "exceeds"),
        "empty body": (client.post("/explain", content=b""), 400, "empty"),
        "topk 0": (client.post("/explain?topk=0", content=data), 422, ""),
    }
    for name, (response, status, words) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        assert words in str(response.json()["detail"]), (name, response.text)


def test_a_slow_explanation_times_out_and_the_next_finds_it_busy(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", num_classes=3)
    predictor = Predictor.from_run(run)
    # A real network made slow: a forward hook that waits 0.6 s in each forward pass explain makes.
    predictor.model.register_forward_hook(lambda *_: time.sleep(0.6))  # the module explain runs (not the engine)
    limits = ServeLimits(max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels, explain_timeout_s=0.2)
    data = kit.write_images(tmp_path / "images", 1)[0].read_bytes()
    with Server(create_app(predictor, limits), free_port()) as server, httpx.Client(base_url=server.url) as c:
        late = c.post("/explain", content=data, timeout=30)
        busy = c.post("/explain", content=data, timeout=30)  # the first one's backward pass is still running
        assert (late.status_code, busy.status_code) == (503, 503)
        assert "longer than 0.2 s" in late.json()["detail"] and "busy" in busy.json()["detail"]
        time.sleep(1.5)  # the first one has finished: the next request is not refused as busy
        again = c.post("/explain", content=data, timeout=30)
        assert again.status_code == 503 and "longer than" in again.json()["detail"]


def test_onnx_backend_says_explain_needs_the_torch_model(kit, tmp_path):
    run = kit.write_run(tmp_path / "run", num_classes=3)
    predictor = Predictor.from_run(run, backend="onnx")
    data = kit.write_images(tmp_path / "images", 1)[0].read_bytes()
    with Server(create_app(predictor, LIMITS), free_port()) as server:
        response = httpx.post(server.url + "/explain", content=data, timeout=60)
        assert response.status_code == 409 and "PyTorch model" in response.json()["detail"]
        assert httpx.post(server.url + "/predict", content=data, timeout=60).status_code == 200


@pytest.mark.browser
def test_the_page_shows_the_overlay_beside_the_probabilities(served, browser, tmp_path):  # noqa: F811
    server, predictor, images = served
    browser.get(server.url + "/")
    _wait_for(browser, "return document.getElementById('model').textContent.includes('classes')")
    browser.send_keys(browser.find("#file"), str(images[2]))
    # The overlay as the browser decoded it, read back through a canvas (a blob: URL is same-origin).
    pixels = _wait_for(
        browser,
        "const im = document.getElementById('overlay');"
        "if (document.getElementById('explain').hidden || !im.complete || !im.naturalWidth) return null;"
        "const c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;"
        "const g = c.getContext('2d'); g.drawImage(im, 0, 0);"
        "return Array.from(g.getImageData(0, 0, c.width, c.height).data);",
    )
    (expected,) = predictor.explain([images[2]], occlusion=False, channels=0)
    got = np.asarray(pixels, dtype=np.uint8).reshape(32, 32, 4)[..., :3]
    assert np.array_equal(got, overlay(expected.image, expected.cam))
    title = browser.script("return document.getElementById('explain-title').textContent")
    assert expected.explained.label in title and "Grad-CAM" in title
    bars = browser.script("return Array.from(document.querySelectorAll('#bars .label'), e => e.textContent)")
    assert bars[0] == expected.explained.label  # the map is of the class shown first
    # Beside the bars: the overlay sits in the results column, below them, and is drawn larger than 32 px.
    box = browser.script(
        "const r = document.getElementById('overlay').getBoundingClientRect();"
        "const b = document.getElementById('bars').getBoundingClientRect(); return [r.top, r.width, b.bottom];"
    )
    assert box[0] >= box[2] and box[1] >= 4 * 32
    shot = browser.screenshot()
    assert shot.startswith(b"\x89PNG")
    Path(os.environ.get("IMGCLS_EXPLAIN_SCREENSHOT", tmp_path / "explain.png")).write_bytes(shot)
