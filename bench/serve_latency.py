"""How long the `vqprior serve` page waits, after the model is loaded: a grid of 16 digits and the completion of a
drawn half-digit, through the real app (in-process HTTP client), median of --repeat requests.

    .venv/bin/python bench/serve_latency.py [--run artifacts/mnist] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402
from train_speed import matmul_gflops  # noqa: E402

from vqprior.serve.app import create_app  # noqa: E402


def half_digit() -> str:
    a = np.zeros((28, 28), np.uint8)
    a[5:15, 10:18] = 255  # the top half of a stroke
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def median_seconds(client, path, body, repeat) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        response = client.post(path, json={**body, "seed": i})
        times.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.text
    return statistics.median(times)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    print(
        f"threads={pin_threads(args.threads)}; yardstick fp32 matmul {matmul_gflops(torch.device('cpu'), torch.float32):.0f} GFLOP/s"
    )
    t0 = time.perf_counter()
    with TestClient(create_app(args.run, device="cpu", hosts=("testserver",))) as client:
        print(f"load (model, test digits, OOD threshold): {time.perf_counter() - t0:.2f} s")
        client.post("/api/generate", json={"n": 4})  # warm-up
        print(
            f"grid of 16 digits: {median_seconds(client, '/api/generate', {'n': 16}, args.repeat):.3f} s (median of {args.repeat})"
        )
        print(
            f"mix slider step (8 digits): {median_seconds(client, '/api/generate', {'n': 8, 'mix': {'a': 4, 'b': 9, 'weight': 0.5}}, args.repeat):.3f} s"
        )
        body = {"image": half_digit(), "keep_rows": 3, "samples": 8}
        print(
            f"completion of a drawn half-digit (8 completions + posterior): {median_seconds(client, '/api/complete', body, args.repeat):.3f} s"
        )
        mask = [[0 if 8 <= y < 20 and 8 <= x < 20 else 1 for x in range(28)] for y in range(28)]
        body = {"test_index": 0, "mask": mask, "samples": 8}  # the eraser: a 12x12 box erased in a test digit
        print(
            f"erase a box and regenerate it (8 completions + posterior, MCMC): {median_seconds(client, '/api/complete', body, args.repeat):.3f} s"
        )
        body = {"test_index": 0, "keep": "bottom", "samples": 8}
        print(
            f"regenerate the top half of a test digit (8 completions + posterior, MCMC): {median_seconds(client, '/api/complete', body, args.repeat):.3f} s"
        )
