"""`vqprior serve` under load: N concurrent clients mixing generate / complete / score against a real server
(uvicorn in its own process, 127.0.0.1 only) for a fixed time, with slow clients that trickle a body byte by byte.

For each N (default 10, 30, 100) it prints requests/s, p50/p99 latency per endpoint, status counts (a 5xx is a
failure), the server's RSS before and after, how long the page's first screen (GET / and /api/info) takes while the
model lock is busy, and whether the trickling clients slowed the others. Every loop is bounded in count and time.

    .venv/bin/python bench/serve_load.py --run artifacts/mnist [--clients 10,30,100] [--seconds 20] [--trickle 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx2 as httpx  # the dev extra's HTTP client (httpx's successor, the same API)
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import matmul_gflops  # noqa: E402

MAX_REQUESTS = 20_000  # per level, whatever the duration: the loops stop by themselves
CLIENT_TIMEOUT = 60  # seconds a client waits for one answer (a longer wait counts as ReadTimeout)


def png(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


def digit() -> np.ndarray:
    a = np.zeros((28, 28), np.uint8)
    a[5:23, 12:16] = 255
    return a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def client_loop(http: httpx.AsyncClient, base: str, deadline: float, stats: dict, counter: list, k: int) -> None:
    image = "data:image/png;base64," + base64.b64encode(png(digit())).decode()
    upload = png(digit())
    i = k
    while time.monotonic() < deadline and counter[0] < MAX_REQUESTS:
        counter[0] += 1
        kind = ("generate", "complete", "score")[i % 3]
        i += 1
        t0 = time.perf_counter()
        try:
            if kind == "generate":
                r = await http.post(f"{base}/api/generate", json={"n": 16, "seed": i % 100})
            elif kind == "complete":
                r = await http.post(
                    f"{base}/api/complete", json={"image": image, "keep_rows": 3, "samples": 8, "seed": i % 100}
                )
            else:
                r = await http.post(f"{base}/api/score", files={"file": ("d.png", upload, "image/png")})
            status = r.status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        stats["latency"][kind].append(time.perf_counter() - t0)
        stats["status"][status] += 1


async def first_screen(http: httpx.AsyncClient, base: str, deadline: float, out: list) -> None:
    """GET / and /api/info once a second while the load runs (the model lock is busy all the while)."""
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        a, b = await http.get(f"{base}/"), await http.get(f"{base}/api/info")
        t1 = time.perf_counter()
        bad = await http.post(f"{base}/api/generate", json={"n": -1})  # a bad request: answered without the model
        out.append((t1 - t0, a.status_code, b.status_code, time.perf_counter() - t1, bad.status_code))
        await asyncio.sleep(1)


async def trickle(host: str, port: int, deadline: float, sent: list) -> None:
    """A slow client: announces a 4 KB JSON body and sends it one byte every 0.2 s (never finishing in time)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
        )
        await writer.drain()
        while time.monotonic() < deadline:
            writer.write(b" ")
            await writer.drain()
            sent[0] += 1
            await asyncio.sleep(0.2)
        writer.close()
    except (ConnectionError, OSError):
        pass


async def level(base: str, host: str, port: int, clients: int, seconds: float, trickling: int) -> dict:
    stats = {"latency": defaultdict(list), "status": Counter()}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as http:
        deadline = time.monotonic() + seconds
        counter, screens, sent = [0], [], [0]
        t0 = time.perf_counter()
        await asyncio.gather(
            *(client_loop(http, base, deadline, stats, counter, k) for k in range(clients)),
            first_screen(http, base, deadline, screens),
            *(trickle(host, port, deadline, sent) for _ in range(trickling)),
        )
        wall = time.perf_counter() - t0
    stats["wall"], stats["screens"], stats["requests"] = wall, screens, counter[0]
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--clients", default="10,30,100")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--trickle", type=int, default=8, help="slow clients trickling a body during each level")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"yardstick fp32 matmul {matmul_gflops(torch.device('cpu'), torch.float32):.0f} GFLOP/s (2 threads)")
    run = Path(args.run)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vqprior",
        "serve",
        "--out-dir",
        str(run.parent),
        "--name",
        run.name,
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    log = open(os.environ.get("SERVE_LOG", os.devnull), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=log, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            if server.poll() is not None:
                raise SystemExit("the server did not start (set SERVE_LOG=file to see why)")
        print(f"server pid {server.pid}, RSS after start {rss_mb(server.pid):.0f} MB")
        for clients in (int(c) for c in args.clients.split(",")):
            before = rss_mb(server.pid)
            s = asyncio.run(level(base, "127.0.0.1", port, clients, args.seconds, args.trickle))
            after = rss_mb(server.pid)
            five = sum(v for k, v in s["status"].items() if isinstance(k, int) and k >= 500)
            print(
                f"\n{clients} clients, {args.trickle} trickling, {s['wall']:.1f} s: {s['requests']} requests, "
                f"{s['requests'] / s['wall']:.1f} req/s; statuses {dict(s['status'])}; 5xx: {five}"
            )
            for kind, lat in sorted(s["latency"].items()):
                print(
                    f"  {kind:9s} n={len(lat):5d}  p50 {percentile(lat, 50):6.2f} s  p99 {percentile(lat, 99):6.2f} s"
                )
            screens = [t for t, a, b, _, _ in s["screens"] if a == 200 and b == 200]
            bad = [t for _, _, _, t, code in s["screens"] if code == 400]
            print(
                f"  first screen (GET / + /api/info) while busy: max {max(screens, default=float('nan')):.3f} s, "
                f"median {statistics.median(screens) if screens else float('nan'):.3f} s over {len(s['screens'])} tries; "
                f"a bad request's 400: max {max(bad, default=float('nan')):.3f} s ({len(bad)} of {len(s['screens'])})"
            )
            print(f"  server RSS {before:.0f} -> {after:.0f} MB")
        # the same load without trickling clients, to see whether they slowed anyone
        s = asyncio.run(level(base, "127.0.0.1", port, 10, args.seconds, 0))
        print(
            f"\n10 clients, no trickling: {s['requests'] / s['wall']:.1f} req/s; "
            + ", ".join(f"{k} p50 {percentile(v, 50):.2f} s" for k, v in sorted(s["latency"].items()))
        )
        print(f"server RSS at the end {rss_mb(server.pid):.0f} MB")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    main()
