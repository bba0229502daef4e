"""The web page in real headless Chromium, driven through chromedriver's W3C WebDriver protocol (plain HTTP)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,700",
]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


class Browser:
    """The few WebDriver commands the test needs, over httpx."""

    def __init__(self, driver_url: str, profile: str):
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": str(CHROMIUM), "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]},
        }
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.base = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        response = self.http.request(method, path, json=body)
        value = response.json()["value"]
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", f"{self.base}/url", {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", f"{self.base}/element", {"using": "css selector", "value": css})[ELEMENT]

    def send_keys(self, element: str, text: str) -> None:
        self._call("POST", f"{self.base}/element/{element}/value", {"text": text})

    def script(self, source: str):
        return self._call("POST", f"{self.base}/execute/sync", {"script": source, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", f"{self.base}/screenshot"))

    def quit(self) -> None:
        try:
            self._call("DELETE", self.base)
        finally:
            self.http.close()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("headless Chromium not installed (Debian packages chromium and chromium-driver)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = subprocess.Popen(
        [str(CHROMEDRIVER), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    profile = tempfile.mkdtemp(prefix="imgcls-chromium-")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()["value"]["ready"]:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        b = Browser(f"http://127.0.0.1:{port}", profile)
        try:
            yield b
        finally:
            b.quit()
    finally:
        driver.terminate()
        driver.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for(browser: Browser, script: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def test_choose_an_image_and_see_its_top5(served, browser, tmp_path):
    server, predictor, images = served
    browser.get(server.url + "/")
    _wait_for(browser, "return document.getElementById('model').textContent.includes('classes')")
    assert predictor.name in browser.script("return document.getElementById('model').textContent")

    browser.send_keys(browser.find("#file"), str(images[0]))
    rows = _wait_for(
        browser,
        "const li = document.querySelectorAll('#bars li');"
        "return li.length ? Array.from(li, e => [e.querySelector('.label').textContent,"
        " parseFloat(e.querySelector('.bar').style.width)]) : null;",
    )
    expected = predictor.predict([images[0]], topk=5)[0].predictions
    assert [label for label, _ in rows] == [p.label for p in expected]
    widths = [w for _, w in rows]
    assert widths == sorted(widths, reverse=True)
    assert abs(widths[0] - 100 * expected[0].probability) < 0.01
    assert browser.script("const im = document.getElementById('preview'); return !im.hidden && im.naturalWidth > 0")

    shot = browser.screenshot()
    assert shot.startswith(b"\x89PNG")
    target = Path(os.environ.get("IMGCLS_SCREENSHOT", tmp_path / "page.png"))
    target.write_bytes(shot)


def test_a_refused_file_shows_the_reason(served, browser, tmp_path):
    server, _, _ = served
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    browser.get(server.url + "/")
    browser.send_keys(browser.find("#file"), str(text))
    status = _wait_for(
        browser, "const s = document.getElementById('status'); return s.className === 'error' ? s.textContent : null"
    )
    assert "notes.jpg" in status and "not an image" in status
    assert browser.script("return document.querySelectorAll('#bars li').length") == 0
