"""The page's requests as calls on `vqprior.api.Run`: each request's fields are checked and its image decoded here,
in the caller's (worker) thread; what needs the model is returned as a job for the one model thread."""

from __future__ import annotations

import base64
import io
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ..api import Run, load
from ..config import MAX_SEED, SWEEPS
from ..datasets.pixels import UNREADABLE, fit_to, open_image, to_uint8, why_unreadable
from ..errors import UserError
from ..masks import SHORTHANDS, code_mask
from ..soft_labels import class_mix, class_morph

MAX_IMAGES = 64  # images per generated grid
MAX_COMPLETIONS = 16
# seconds of Metropolis-Hastings sweeps one completion request may take (the drafts come first): the page runs one
# model thread, so a generate is never queued behind more than about this much completion; past it, the chain stops
COMPLETION_BUDGET = 1.0
MAX_MORPH = 16  # steps of a morph strip
MAX_UPLOAD = 4 << 20  # bytes of an uploaded or drawn image
OOD_QUANTILE = 0.99  # an input whose code bits exceed this quantile of the run's test digits is flagged


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


def guidance_value(body: dict, default):
    """A number, or [first, last]: a ramp over the raster positions (`vqprior.guidance`)."""
    value = body.get("guidance", default)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise BadRequest(f"guidance must be a number or [first, last], got {_short(value)}")
        return tuple(number({"guidance": v}, "guidance", None, 0, 100) for v in value)
    return number(body, "guidance", default, 0, 100)


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
        """The run's `vqprior eval` headline, for the page's header (None when it was not evaluated)."""
        from ..evaluation.verdict import comparable, reasons

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
                "comparable": comparable(ev),
                "reasons": reasons(ev),
            }
        except (UserError, KeyError, TypeError, ValueError):
            return None

    def sampling(self, body: dict) -> dict:
        return {
            "temperature": number(body, "temperature", self.run.temperature, 0.01, 100),
            "guidance": guidance_value(body, self.run.guidance),
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
            return {"image": png(out.images, nrow=nrow), "n": n, **kw}

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
        sweeps = number(body, "sweeps", SWEEPS, 0, 16, integer=True)
        kw = self.sampling(body)
        label = self.label(body)

        def job():
            done = r.complete(
                image, keep_rows, samples, label, **kw, keep=keep, sweeps=sweeps, time_budget=COMPLETION_BUDGET
            )
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
                "method": done.method,
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
