"""A real uvicorn server on 127.0.0.1 (a free port) serving a tiny run folder, for the service and page tests."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn
from tests.inference import helpers
from tests.support import free_port

from imgcls.inference import Predictor
from imgcls.serve import ServeLimits, create_app

# Small limits so that hostile requests are cheap to build; a burst still fits in one batch window.
LIMITS = ServeLimits(max_bytes=256 * 1024, max_pixels=4_000_000, max_batch=32, batch_wait_ms=5.0)


class Server:
    """uvicorn in a background thread; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, app, port: int):
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, predictor, folder of test images) for a module's tests; one server per test module."""
    root = tmp_path_factory.mktemp("serve")
    run = helpers.write_run(root / "run", num_classes=6)
    predictor = Predictor.from_run(run, batch_size=LIMITS.max_batch)
    images = helpers.write_images(root / "images", 6)
    with Server(create_app(predictor, LIMITS), free_port()) as server:
        yield server, predictor, images


@pytest.fixture
def kit():
    return helpers
