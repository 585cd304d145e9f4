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
import base64
import io
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from torchvision.utils import make_grid

from ..api import Run, load
from ..artifacts import read_regular
from ..config import MAX_SEED
from ..datasets.pixels import UNREADABLE, fit_to, open_image, to_uint8, why_unreadable
from ..errors import UserError
from ..masks import SHORTHANDS, code_mask
from ..soft_labels import class_mix, class_morph

PAGE = Path(__file__).parent / "page.html"
MAX_IMAGES = 64  # images per generated grid
MAX_COMPLETIONS = 16
MAX_MORPH = 16  # steps of a morph strip
MAX_UPLOAD = 4 << 20  # bytes of an uploaded or drawn image
OOD_QUANTILE = 0.99  # an input whose code bits exceed this quantile of the run's test digits is flagged


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The Host header values a server listening on `host` answers: the loopback names for a loopback address, that
    address itself otherwise, anything for a wildcard (0.0.0.0 / ::, where the names it is reached by are unknown)."""
    if host in ("0.0.0.0", "::", ""):
        return ("*",)
    if host in LOOPBACK_NAMES or host.startswith("127."):
        return (*LOOPBACK_NAMES, host)
    return (host, f"[{host}]") if ":" in host else (host,)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def png(images: torch.Tensor, nrow: int, scale: int = 3, padding: int = 2) -> str:
    """uint8 images [N, C, H, W] -> a data URL of their grid, scaled up without smoothing."""
    grid = make_grid(images.float() / 255, nrow=nrow, padding=padding, pad_value=0.5).mul(255).round().byte()
    img = Image.fromarray(
        grid.permute(1, 2, 0).numpy().squeeze(-1) if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    )
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def number(body: dict, key: str, default, lo, hi, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{key} must be {'an integer' if integer else 'a number'}, got {_short(value)}")
    if isinstance(value, int) and not lo <= value <= hi:  # before float(): a 400-digit integer would overflow it
        raise BadRequest(f"{key} must be in {lo}..{hi}, got {_short(value)}")
    if integer and not float(value).is_integer():
        raise BadRequest(f"{key} must be an integer, got {_short(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadRequest(f"{key} must be in {lo}..{hi}, got {_short(value)}")
    return int(value) if integer else float(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Service:
    """The run, its limits, and the one model thread (a FIFO queue) with its lock that serialise model work."""

    def __init__(self, run: Run, model_thread: ThreadPoolExecutor):
        self.run, self.lock, self.model_thread = run, threading.Lock(), model_thread
        self.ood_threshold, self.test_images = None, None
        try:
            self.test_images = run.test_images(1000)
            bits = model_thread.submit(run.score, self.test_images[:500]).result()["code_bits"]
            self.ood_threshold = float(torch.quantile(bits.double(), OOD_QUANTILE))
        except UserError:
            pass  # data no longer on this machine: no test digits to pick, no OOD threshold

    @classmethod
    def start(cls, run_dir, device: str, trust_code: bool) -> "Service":
        """Load the run in the model thread, the one thread that ever runs the model: a second thread running torch
        would start a second OpenMP team, whose idle threads spin on the same cores (3.5x slower on 2 cores)."""
        model_thread = ThreadPoolExecutor(1, "vqprior-model")
        return cls(model_thread.submit(load, run_dir, device, trust_code).result(), model_thread)

    def info(self) -> dict:
        r = self.run
        return {
            "run": str(r.folder),
            "classes": r.class_names or [],
            "grid": list(r.grid),
            "image_shape": list(r.image_shape),
            "temperature": r.temperature,
            "guidance": r.guidance,
            "ood_threshold": self.ood_threshold,
            "test_images": 0 if self.test_images is None else len(self.test_images),
            "limits": {
                "n": MAX_IMAGES,
                "samples": MAX_COMPLETIONS,
                "steps": MAX_MORPH,
                "upload_bytes": MAX_UPLOAD,
                "keep_rows": r.grid[0],
            },
            "report": r.run_folder.report.is_file(),
            "prior": type(r.prior).__name__,
            "quality": self.quality(),
        }

    def quality(self) -> dict | None:
        """The run's latest `vqprior eval` headline, for the page's header (None when it was not evaluated)."""
        try:
            ev = self.run.run_folder.evaluation()
            if ev is None:
                return None
            samples = ev["samples"]
            return {
                "fd_ratio": float(samples["fd_ratio"]),
                "spaces": len(ev.get("spaces", {})) or 1,
                "conditional_accuracy": samples.get("conditional_accuracy"),
                "n": int(ev["n_samples"]),
            }
        except (UserError, KeyError, TypeError, ValueError):
            return None

    def sampling(self, body: dict) -> dict:
        return {
            "temperature": number(body, "temperature", self.run.temperature, 0.01, 100),
            "guidance": number(body, "guidance", self.run.guidance, 0, 100),
            "seed": number(body, "seed", 0, 0, MAX_SEED, integer=True),
        }

    def label(self, body: dict, key: str = "label") -> int | None:
        classes = self.run.num_classes
        value = body.get(key)
        if value is None:
            return None
        if not classes:
            raise BadRequest("this run's prior is unconditional; leave the class empty")
        return number(body, key, None, 0, classes - 1, integer=True)

    def generate(self, body: dict):
        n = number(body, "n", 16, 1, MAX_IMAGES, integer=True)
        kw = self.sampling(body)
        r = self.run
        mix = body.get("mix")
        every_class = False
        if mix is not None:
            if not r.num_classes:
                raise BadRequest("mixing needs a class-conditional prior")
            if not isinstance(mix, dict):
                raise BadRequest('mix must be {"a": class, "b": class, "weight": 0..1}')
            a, b = self.label(mix, "a"), self.label(mix, "b")
            if a is None or b is None:
                raise BadRequest("mix needs two classes, a and b")
            w = number(mix, "weight", 0.5, 0, 1)
            args = {"labels": class_mix(r.num_classes, [(a, 1 - w), (b, w)]).repeat(n, 1)}
        elif r.num_classes:
            label = self.label(body)
            every_class = label is None
            args = {"labels": torch.full((n,), label) if label is not None else torch.arange(n) % r.num_classes}
        else:
            args = {"n": n}

        def job():
            out = r.generate(**args, **kw)
            # every class: one column per class, so the classes line up; one class or a mix: rows of 8
            nrow = r.num_classes if every_class else min(8, n)
            return {"image": png(out.images, nrow=nrow), "count": n, **kw}

        return job

    def morph(self, body: dict):
        r = self.run
        if not r.num_classes:
            raise BadRequest("a morph needs a class-conditional prior")
        a, b = self.label(body, "a"), self.label(body, "b")
        if a is None or b is None:
            raise BadRequest("a morph needs two classes, a and b")
        steps = number(body, "steps", 9, 2, MAX_MORPH, integer=True)
        kw = self.sampling(body)
        weights = class_morph(r.num_classes, a, b, steps)

        def job():  # one noise for the whole strip: map 0 of the seed at every step, only the label moves
            frames = [r.generate(labels=weights[k : k + 1], **kw).images for k in range(steps)]
            return {"image": png(torch.cat(frames), nrow=steps), **kw}

        return job

    def complete(self, body: dict):
        r = self.run
        if body.get("test_index") is not None:
            if self.test_images is None:
                raise BadRequest("this run's test images are not on this machine; draw a digit instead")
            i = number(body, "test_index", 0, 0, len(self.test_images) - 1, integer=True)
            image = self.test_images[i : i + 1]
        else:
            image = decode_image(body.get("image"), r.image_shape)[0]
        keep_rows, keep = None, None
        if body.get("mask") is not None:  # 1 = kept, 0 = erased, one value per pixel (or per code position)
            keep = self.mask(body["mask"])
        elif body.get("keep") is not None:
            keep = body["keep"]
            if keep not in SHORTHANDS:
                raise BadRequest(f"keep must be one of {', '.join(SHORTHANDS)}")
        else:
            keep_rows = number(body, "keep_rows", r.grid[0] // 2, 0, r.grid[0], integer=True)
        samples = number(body, "samples", 8, 1, MAX_COMPLETIONS, integer=True)
        sweeps = number(body, "sweeps", 2, 0, 16, integer=True)
        kw = self.sampling(body)
        label = self.label(body)

        def job():
            done = r.complete(image, keep_rows, samples, label, **kw, keep=keep, sweeps=sweeps)
            strip = done.panels()[0]
            posterior = (
                None
                if done.posterior is None
                else [{"class": str(r.class_names[c]), "p": float(p)} for c, p in enumerate(done.posterior[0].tolist())]
            )
            return {
                "image": png(strip, nrow=len(strip)),
                "keep_rows": keep_rows,
                "exact": done.exact,
                "method": "exact" if done.exact else "parallel" if r.prior.parallel else "mcmc",
                "posterior": posterior,
                "columns": ["original", "kept"] + [f"completion {k + 1}" for k in range(samples)],
                **kw,
            }

        return job

    def mask(self, value) -> np.ndarray:
        """A JSON keep mask: rows of 0/1 the size of the image or of the code map (checked before any model work)."""
        r = self.run
        if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
            raise BadRequest("mask must be a list of rows of 0/1 values")
        if len(value) > 4096 or any(len(row) > 4096 for row in value):
            raise BadRequest("mask is too large: give it the image's size")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for row in value for v in row):
            raise BadRequest("mask values must be 0 (erased) or 1 (kept)")
        if len({len(row) for row in value}) != 1:
            raise BadRequest("mask rows must all have the same length")
        array = np.asarray(value, dtype=np.uint8)
        code_mask(array, 1, r.grid, tuple(r.image_shape[1:]), "mask")  # size, nothing kept, everything kept
        return array

    def score(self, data: bytes):
        image, notice = decode_bytes(data, self.run.image_shape)
        return lambda: self._score(image, notice)

    def _score(self, image: torch.Tensor, notice: str | None) -> dict:
        r = self.run
        s = r.score(image)
        recon = r.decode(r.encode(image))
        bits = float(s["code_bits"][0])
        best = int(s["best_class"][0])
        return {
            "code_bits": bits,
            "best_class": str(r.class_names[best]) if best >= 0 else None,
            "recon_mse": float(s["recon_mse"][0]),
            "image_bits_bound": float(s["image_bits_bound"][0]),
            "ood_threshold": self.ood_threshold,
            "out_of_distribution": None if self.ood_threshold is None else bits > self.ood_threshold,
            "image": png(torch.cat([image, recon]), nrow=2),
            "notice": notice,
        }


def decode_bytes(data: bytes, image_shape) -> tuple[torch.Tensor, str | None]:
    """Any image Pillow opens (the rules of `vqprior score`: modes scaled by their range), resized and centre-cropped
    to the run's size, as uint8 [1, C, H, W]."""
    if not data:
        raise BadRequest("no image in the request")
    if len(data) > MAX_UPLOAD:
        raise BadRequest(f"the image is {len(data):,} bytes; the limit is {MAX_UPLOAD:,}", 413)
    c, h, w = image_shape
    try:
        pixels, notice = to_uint8(open_image(io.BytesIO(data)), c)
    except UNREADABLE as e:
        raise BadRequest(f"not a readable image: {why_unreadable(e)}") from None
    a, resized = fit_to(pixels, h, w)
    notice = "; ".join(n for n in (notice, resized) if n) or None
    tensor = torch.from_numpy(a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy())
    return tensor[None], notice


def decode_image(data_url, image_shape) -> tuple[torch.Tensor, str | None]:
    if not isinstance(data_url, str) or not data_url.startswith("data:image/") or "," not in data_url:
        raise BadRequest("image must be a data URL (data:image/png;base64,...)")
    if len(data_url) > MAX_UPLOAD * 4 // 3 + 100:
        raise BadRequest("the image is too large", 413)
    try:
        data = base64.b64decode(data_url.split(",", 1)[1], validate=True)
    except ValueError:
        raise BadRequest("image is not valid base64") from None
    return decode_bytes(data, image_shape)


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
