"""The web app: one static page and a small JSON API over `vqprior.api.Run`.

Every request is validated, and its image decoded, before it waits for the model (4xx with {"error": "..."}
otherwise, never a traceback); sizes are bounded (images per grid, completions, upload bytes, decoded pixels, JSON
depth), bodies are read in chunks and cut at the limit; only model work runs in the one model thread, first come
first served (a FIFO queue, so no request starves however many wait), so a slow request never blocks the page,
the static files or another request's validation, which run in the ordinary worker threads. Requests whose
Host header is not a name the server was started for are refused (a page elsewhere cannot reach it by DNS rebinding).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..artifacts import read_regular
from ..errors import UserError
from .service import MAX_UPLOAD, BadRequest, Service, png

PAGE = Path(__file__).parent / "page.html"


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The Host header values a server listening on `host` answers: the loopback names for a loopback address, that
    address itself otherwise, anything for a wildcard (0.0.0.0 / ::, where the names it is reached by are unknown)."""
    if host in ("0.0.0.0", "::", ""):
        return ("*",)
    if host in LOOPBACK_NAMES or host.startswith("127."):
        return (*LOOPBACK_NAMES, host)
    return (host, f"[{host}]") if ":" in host else (host,)


def create_app(
    run_dir: str | Path, device: str = "auto", trust_code: bool = False, hosts: tuple[str, ...] = LOOPBACK_NAMES
) -> Starlette:
    """The app over one run. `hosts`: the names a request's Host header may carry (vqprior serve passes the ones it
    listens on); "*" accepts any."""
    service = Service.start(run_dir, device, trust_code)

    def endpoint(plan, reads: str = "json"):
        async def handle(request: Request) -> Response:
            try:
                if reads == "json":
                    raw = await read_capped(request, MAX_UPLOAD * 4 // 3 + 4096)
                    try:
                        body = json.loads(raw)
                    except (ValueError, RecursionError):
                        raise BadRequest("the request body must be JSON (UTF-8, nested at most a few levels)") from None
                    if not isinstance(body, dict):
                        raise BadRequest("the request body must be a JSON object")
                    arg = body
                else:
                    arg = await read_upload(request)
                job = await run_in_threadpool(plan, arg)  # validation and image decoding: no lock held

                def locked():
                    with service.lock, torch.inference_mode():
                        return job()

                return JSONResponse(await asyncio.wrap_future(service.model_thread.submit(locked)))
            except ClientDisconnect:  # the client went away mid-body (a slow or cancelled upload): nobody to answer
                return Response(status_code=400)
            except BadRequest as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except UserError as e:
                return JSONResponse({"error": str(e)}, status_code=400)

        return handle

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def info(request: Request) -> Response:
        return JSONResponse(service.info())

    async def test_digit(request: Request) -> Response:
        images = service.test_images
        if images is None:
            return JSONResponse({"error": "this run's test images are not on this machine"}, status_code=404)
        try:
            i = int(request.query_params.get("index", "0"))
        except ValueError:
            return JSONResponse({"error": "index must be an integer"}, status_code=400)
        if not 0 <= i < len(images):
            return JSONResponse({"error": f"index must be in 0..{len(images) - 1}"}, status_code=400)
        return JSONResponse({"image": png(images[i : i + 1], nrow=1, scale=1, padding=0)})

    async def report(request: Request) -> Response:
        path = service.run.run_folder.report
        if not os.path.lexists(path):
            return JSONResponse(
                {"error": "this run has no report.html yet; run `vqprior eval` or `vqprior report`"}, status_code=404
            )
        try:  # the run's own file, never a link's target
            service.run.run_folder.check()
            return HTMLResponse(read_regular(path, 256 << 20))
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=403)

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/test-digit", test_digit),
        Route("/report", report),
        Route("/api/generate", endpoint(service.generate), methods=["POST"]),
        Route("/api/morph", endpoint(service.morph), methods=["POST"]),
        Route("/api/complete", endpoint(service.complete), methods=["POST"]),
        Route("/api/score", endpoint(service.score, reads="upload"), methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))])
    app.state.service = service
    return app


async def read_upload(request: Request) -> bytes:
    """The uploaded file's bytes from a multipart form (field "file"), or the raw body. The body is read (in chunks,
    cut at the limit) before the form is parsed, so an oversized upload is refused without being spooled to disk."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_UPLOAD + 4096:
        raise BadRequest(f"the upload is {int(length):,} bytes; the limit is {MAX_UPLOAD:,}", 413)
    body = await read_capped(request, MAX_UPLOAD + 4096)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if len(body) > MAX_UPLOAD:
            raise BadRequest(f"the image is {len(body):,} bytes; the limit is {MAX_UPLOAD:,}", 413)
        return body

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=4, max_part_size=MAX_UPLOAD + 1)
    except Exception:  # noqa: BLE001 - any malformed form is the client's mistake
        raise BadRequest("the upload is not a valid multipart form with one file") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest('the form needs a file field named "file"')
        return await upload.read(MAX_UPLOAD + 1)
    finally:
        await form.close()


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, read in chunks and refused with 413 as soon as it passes `limit` bytes (whatever the
    Content-Length header claims, or without one)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BadRequest(f"the request body is {int(length):,} bytes, over the limit of {limit:,}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is over the limit of {limit:,} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)
