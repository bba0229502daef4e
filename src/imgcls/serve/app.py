"""The HTTP service: a FastAPI app over one Predictor, and `serve(run)` to run it on uvicorn.

Endpoints
    ``POST /predict``   an image as a multipart upload (any one file field) or as the raw request body;
                        ``?topk=K`` (default 5). Answers ``{"predictions": [{"label", "index", "probability"}]}``
                        and, for a multi-label model, ``"labels"``: every class at or above its threshold (the
                        run's, tuned on validation, or 0.5).
    ``POST /explain``   the same upload; answers its top-k (``?topk=K``) and, for the top class (or ``?class=LABEL``),
                        the Grad-CAM map over the network's input as a PNG (``"overlay"``, base64) with the class
                        explained and the layer (`imgcls.inference.explain`). One at a time, within
                        ``explain_timeout_s``; 503 when busy or late, 409 for a model without gradients (ONNX,
                        classical pipelines).
    ``GET /health``     ``{"status": "ok", ...}`` with the number of forward passes and images served.
    ``GET /model``      name, classes, input size, task, thresholds, weights' SHA-256, backend.
    ``GET /``           a page to choose or drop an image and see its top predictions as bars and the
                        Grad-CAM overlay of the top one (``static/``).

Every ``GET`` route answers ``HEAD`` too (headers only).

Hostile input gets a clear 4xx answer, checked in this order, cheapest first:

1. Request size (413): a pure ASGI middleware counts the body while it arrives and stops keeping it at the cap,
   before any multipart parsing (python-multipart has had denial-of-service bugs, e.g. CVE-2024-24762). The 413
   is sent at once; the rest of the body is then read and thrown away, up to ``linger_bytes`` and
   ``linger_seconds`` (nginx's lingering close), so that closing the connection does not reset it under the
   client's feet.
2. Empty body (400); a multipart request without exactly one file (400).
3. Image type sniffed from the first bytes, never from Content-Type (415 for anything else).
4. Pixel count from the header, before decoding (413): a 50 KB PNG can declare 2 gigapixels.
5. Truncated or corrupt data found while decoding (400).

``/explain`` goes through the same checks, then runs in one worker thread at a time (a backward pass costs a few
forward passes): a request that finds it busy, or waits longer than ``explain_timeout_s``, gets 503 at once.

Only a fixed set of static files is served, read into memory at start-up; there is no path parameter and
therefore no path to traverse. Requests that arrive close in time are stacked into one forward pass by a
:class:`MicroBatcher` (an asyncio queue feeding one worker thread), so a burst runs at batch speed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from imgcls.errors import UserError
from imgcls.inference.predictor import Predictor

# Content types of the static files; nothing outside this table is served.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page loads only its own script and style; uploaded images are shown from blob: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Lingering close: the longest pause between two body chunks while draining a refused upload (nginx's
# lingering_timeout, 5 s); the whole drain is bounded by ServeLimits.linger_seconds (nginx's lingering_time, 30 s).
LINGER_READ_TIMEOUT_S = 5.0
# First bytes of the formats the reader decodes (their published signatures).
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost.

    Attributes:
        max_bytes: largest request body, in bytes (413 beyond).
        max_pixels: largest width × height an image header may declare (413 beyond).
        max_batch: most images stacked into one forward pass.
        batch_wait_ms: how long the first request of a batch waits for others to join it.
        max_topk: the largest ``topk`` a request may ask for (capped by the number of classes).
        linger_bytes, linger_seconds: after refusing an oversized body, how much of its rest is read and thrown
            away before the connection closes (nginx's lingering close), so that the client reads the 413 instead
            of a TCP reset; ``linger_bytes=None`` is four times ``max_bytes`` (at least 1 MiB). Beyond either
            bound the connection is closed anyway.
        explain_timeout_s: the longest an ``/explain`` answer may take, in seconds (503 beyond).
    """

    max_bytes: int = 10 << 20
    max_pixels: int = 40_000_000
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    max_topk: int = 100
    linger_bytes: int | None = None
    linger_seconds: float = 30.0
    explain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for flag, value in (("--max-bytes", self.max_bytes), ("--max-pixels", self.max_pixels),
                            ("--max-batch", self.max_batch), ("max_topk", self.max_topk)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{flag} {value}: must be a whole number of at least 1")
        for flag, value in (("--batch-wait-ms", self.batch_wait_ms), ("linger_seconds", self.linger_seconds),
                            ("explain_timeout_s", self.explain_timeout_s)):  # fmt: skip
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 60_000:
                raise UserError(f"{flag} {value}: must be a number of milliseconds/seconds in [0, 60000]")
        if self.linger_bytes is not None and (not isinstance(self.linger_bytes, int) or self.linger_bytes < 0):
            raise UserError(f"linger_bytes {self.linger_bytes}: must be a whole number of at least 0")

    @property
    def drain_bytes(self) -> int:
        """The most bytes of a refused body read and thrown away (``linger_bytes``)."""
        return self.linger_bytes if self.linger_bytes is not None else max(4 * self.max_bytes, 1 << 20)


def sniff_image_type(data: bytes) -> str | None:
    """The image format named by the first bytes of `data`, or None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in SIGNATURES if data.startswith(magic)), None)


class BodySizeLimit:
    """Pure ASGI middleware: read a request's body up to ``max_bytes`` and answer 413 beyond, before the app runs.

    A declared Content-Length over the cap is refused without reading anything; a chunked body is counted as it
    arrives and reading stops at the first byte over the cap. The app then receives the body in one piece.
    """

    def __init__(self, app, max_bytes: int, linger_bytes: int = 1 << 20, linger_seconds: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.linger_bytes = linger_bytes
        self.linger_seconds = linger_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(scope, send, 400, "malformed Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await self._refuse(send, receive, self._too_large(int(declared)))
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                more = message.get("more_body", False)
                await self._refuse(send, receive if more else None, self._too_large(total, at_least=more))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # after the body, the only message left is the disconnect

        await self.app(scope, replay, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return f"request body {'over' if at_least else 'of'} {size} bytes exceeds the {self.max_bytes}-byte limit"

    async def _refuse(self, send, receive, detail: str) -> None:
        """Answer 413 at once, then read and discard the rest of the body (within the linger bounds) before the
        response ends and the server closes the connection.

        Closing a socket whose receive buffer still holds unread bytes makes the kernel answer with a TCP reset,
        which a client still sending sees instead of the 413 (under a few hundred concurrent uploads, most of
        them). The 413 is written first (complete, with its length), so a client that reads while it sends
        stops early; the ASGI response ends only after the drain, because the server stops delivering the body
        once a response is complete.
        """
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": receive is not None})
        if receive is None:
            return
        loop = asyncio.get_running_loop()
        deadline, left = loop.time() + self.linger_seconds, self.linger_bytes
        try:
            while left > 0 and (remaining := deadline - loop.time()) > 0:
                message = await asyncio.wait_for(receive(), timeout=min(remaining, LINGER_READ_TIMEOUT_S))
                if message["type"] == "http.disconnect":
                    break
                left -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except TimeoutError:
            pass  # a client that stopped sending: nothing more to wait for
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(scope, send, status: int, detail: str) -> None:
    # The unread rest of the body stays on the connection, so it cannot be reused: ask the client to close it.
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await response(scope, None, send)


class MicroBatcher:
    """Stack requests that arrive close in time into one forward pass on a single worker thread.

    The first waiting image opens a batch; whatever else is queued joins at once, and the batch then waits up to
    ``wait_s`` for more, until ``max_batch``. While the worker computes, new requests queue and form the next
    batch, so under load batches fill by themselves and an idle service adds at most ``wait_s`` of latency.

    Args:
        fn: uint8 ``(N, C, H, W)`` -> ``(N, K)`` (runs on the worker thread).
        max_batch: most images per forward pass.
        wait_s: how long a batch stays open for late arrivals.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32, wait_s: float = 0.005):
        self.fn = fn
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="imgcls-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="imgcls-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._worker.shutdown(wait=True)

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """Queue one uint8 ``(C, H, W)`` image; returns its row of the batch's output."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = [await queue.get()]
            deadline = loop.time() + self.wait_s
            while len(items) < self.max_batch:
                if not queue.empty():
                    items.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            items = [(x, f) for x, f in items if not f.cancelled()]  # clients that left meanwhile
            if not items:
                continue
            batch = torch.stack([x for x, _ in items])
            try:
                out = await loop.run_in_executor(self._worker, self.fn, batch)
            except Exception as exc:  # the model failed: every waiting request gets the error, the loop goes on
                for _, f in items:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(items)
            self.largest_batch = max(self.largest_batch, len(items))
            for row, (_, f) in zip(out, items, strict=True):
                if not f.done():
                    f.set_result(row)


def create_app(predictor: Predictor, limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI application serving `predictor` within `limits`.

    One function of ~85 lines on purpose: the routes are closures over the predictor, the limits and the
    batcher (FastAPI's idiom), each a few lines; split apart they would need those three passed everywhere.

    Args:
        predictor: the model and its preprocessing.
        limits: request-size, pixel and batching limits (defaults: :class:`ServeLimits`).
    """
    limits = limits or ServeLimits()
    batcher = MicroBatcher(predictor.probabilities, limits.max_batch, limits.batch_wait_ms / 1000.0)
    static = {route: (_read_static(name), ctype) for route, (name, ctype) in STATIC_FILES.items()}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="imgcls", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.limits = limits

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict:
        return {
            "status": "ok",
            "batches": batcher.batches,
            "images": batcher.images,
            "largest_batch": batcher.largest_batch,
        }

    @app.api_route("/model", methods=["GET", "HEAD"])
    async def model_info() -> dict:
        return {
            "name": predictor.name,
            "classes": predictor.classes,
            "num_classes": len(predictor.classes),
            "input_size": list(predictor.input_size),
            "task": predictor.task,
            "sha256": predictor.sha256,
            "thresholds": predictor.thresholds,
            "backend": predictor.backend,
            "precision": predictor.precision,
        }

    @app.post("/predict")
    async def predict(request: Request, topk: int = Query(5, ge=1, le=limits.max_topk)) -> dict:
        data = await _image_bytes(request, limits)
        x = await run_in_threadpool(_decode, predictor, data, limits)
        probs = await batcher.submit(x)
        answer = predictor.answer("upload", probs, topk)
        if not answer.ok:
            raise HTTPException(422, answer.error)
        return {k: v for k, v in answer.to_dict().items() if k != "path"}

    explaining = threading.Lock()  # one backward pass at a time; held by the worker thread until it is done

    @app.post("/explain")
    async def explain(
        request: Request,
        topk: int = Query(5, ge=1, le=limits.max_topk),
        target: str | None = Query(None, alias="class", max_length=200),
    ) -> dict:
        data = await _image_bytes(request, limits)
        x = await run_in_threadpool(_decode, predictor, data, limits)
        if not explaining.acquire(blocking=False):
            raise HTTPException(503, "busy explaining another image; try again in a moment")
        work = asyncio.get_running_loop().run_in_executor(None, _explain_locked, explaining, predictor, x, topk, target)
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout=limits.explain_timeout_s)
        except TimeoutError:
            raise HTTPException(503, f"explaining took longer than {limits.explain_timeout_s:g} s") from None

    def static_route(body: bytes, ctype: str):
        async def serve_static() -> Response:
            return Response(body, media_type=ctype, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

        return serve_static

    for route, (body, ctype) in static.items():
        app.add_api_route(route, static_route(body, ctype), methods=["GET", "HEAD"], include_in_schema=False)

    app.add_middleware(
        BodySizeLimit,
        max_bytes=limits.max_bytes,
        linger_bytes=limits.drain_bytes,
        linger_seconds=limits.linger_seconds,
    )
    return app


async def _image_bytes(request: Request, limits: ServeLimits) -> bytes:
    """The uploaded image: the one file of a multipart form, or the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        # The body is already bounded by BodySizeLimit; these bound the parser's bookkeeping as well.
        form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_bytes)
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise HTTPException(400, "multipart upload must contain exactly one file")
        data = await files[0].read()
    else:
        data = await request.body()
    if not data:
        raise HTTPException(400, "empty body: send an image as the request body or as a multipart file")
    return data


def _decode(predictor: Predictor, data: bytes, limits: ServeLimits) -> torch.Tensor:
    """Sniff, check the header's pixel count, then decode; each refusal becomes its own 4xx."""
    from imgcls.data.reader import ImageError, open_image

    kind = sniff_image_type(data)
    if kind is None:
        raise HTTPException(415, "not an image: expected JPEG, PNG, GIF, BMP, WebP or TIFF data")
    try:
        open_image(data, max_pixels=limits.max_pixels, max_file_bytes=limits.max_bytes).close()
    except ImageError as exc:
        status = 413 if "too large" in exc.reason else 400
        raise HTTPException(status, f"{kind}: {exc.reason}") from None
    try:
        return predictor.load(data, max_pixels=limits.max_pixels)
    except ImageError as exc:
        raise HTTPException(400, f"{kind}: {exc.reason}") from None


def _explain_locked(lock: threading.Lock, predictor: Predictor, pixels: torch.Tensor, topk: int, target) -> dict:
    """Grad-CAM of one decoded image as the JSON answer of ``/explain``; releases ``lock`` when done."""
    try:
        return _explain_one(predictor, pixels, topk, target)
    finally:
        lock.release()


def _explain_one(predictor: Predictor, pixels: torch.Tensor, topk: int, target) -> dict:
    from PIL import Image

    from imgcls.errors import UserError
    from imgcls.inference.explain import ExplainOptions, explain
    from imgcls.report.anatomy import overlay

    options = ExplainOptions(target=target, occlusion=False, channels=0, topk=topk)
    try:
        (found,) = explain(predictor, [pixels], options)
    except UserError as exc:
        status = 400 if str(exc).startswith("--class") else 409
        raise HTTPException(status, str(exc).replace("--class", "class", 1)) from None
    if not found.ok:
        raise HTTPException(400, found.error)
    png = io.BytesIO()
    Image.fromarray(overlay(found.image, found.cam)).save(png, format="PNG")
    return {
        "predictions": [{"label": p.label, "index": p.index, "probability": p.probability} for p in found.predictions],
        "class": {
            "label": found.explained.label,
            "index": found.explained.index,
            "probability": found.explained.probability,
        },
        "layer": found.cam_layer,
        "width": int(found.image.shape[1]),
        "height": int(found.image.shape[0]),
        "overlay": base64.b64encode(png.getvalue()).decode("ascii"),
    }


def _read_static(name: str) -> bytes:
    return resources.files("imgcls.serve").joinpath("static", name).read_bytes()


def serve(
    run: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    backend: str = "torch",
    precision: str = "auto",
    engine: str | None = None,
    max_int8_drop: float | None = None,
) -> None:
    """Load a run folder (weights' SHA-256 checked against model.json) and serve it until interrupted.

    The address is bound before anything is announced: a busy port or an unknown host is a one-line error, and
    "serving on ..." is printed only once the socket listens (with the port the system chose for ``port=0``).
    ``precision``, ``engine`` and ``max_int8_drop`` choose the engine as for ``imgcls predict``.
    """
    import uvicorn

    limits = limits or ServeLimits()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"--port {port}: must be a port number from 0 to 65535 (0: any free port)")
    sock = _listen(host, port)
    try:
        predictor = Predictor.from_run(
            run,
            backend=backend,
            batch_size=limits.max_batch,
            precision=precision,
            engine=engine,
            max_int8_drop=max_int8_drop,
        )
        chosen = f"; {predictor.selection.describe()}" if predictor.selection is not None else ""
        config = uvicorn.Config(create_app(predictor, limits), log_level="warning")
        shown = f"[{host}]" if ":" in host else host
        print(
            f"imgcls: serving {predictor.name} ({len(predictor.classes)} classes, {predictor.backend} "
            f"{predictor.precision}, weights {predictor.sha256[:12]}… verified) on "
            f"http://{shown}:{sock.getsockname()[1]}/{chosen}",
            flush=True,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or a UserError saying why there cannot be one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host}: not an address to listen on ({getattr(exc, 'strerror', exc)})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT only; a busy one still fails
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock


__all__ = ["BodySizeLimit", "MicroBatcher", "ServeLimits", "create_app", "serve", "sniff_image_type"]
