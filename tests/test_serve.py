"""`vqprior serve`: every endpoint with good and bad input, bounded work, a page that survives abuse, and the real
page driven in headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

from vqprior.cli import app as cli

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from vqprior.serve.app import MAX_UPLOAD, create_app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    result = runner.invoke(
        cli, ["run", *tiny_args(out), "--per-class", "1", "--set", "prior.epochs=2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return out / "t"


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, device="cpu", hosts=("testserver",))) as c:
        yield c


def png_bytes(array: np.ndarray, mode=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(array)).decode()


def decoded(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def stroke() -> np.ndarray:
    a = np.zeros((28, 28), np.uint8)
    a[4:24, 12:16] = 255  # a "1"
    return a


def test_info_describes_the_run(client):
    info = client.get("/api/info").json()
    assert (
        info["classes"] == [str(d) for d in range(10)] and info["grid"] == [7, 7] and info["image_shape"] == [1, 28, 28]
    )
    assert info["ood_threshold"] > 0 and info["limits"]["n"] == 64
    assert client.get("/").text.startswith("<!doctype html>")


def test_generate_a_grid_of_one_class_of_every_class_and_a_mix(client):
    one = client.post("/api/generate", json={"label": 3, "n": 16, "seed": 1}).json()
    img = decoded(one["image"])
    assert img.size == ((8 * 30 + 2) * 3, (2 * 30 + 2) * 3)  # 8 per row, 2 rows, scaled 3x
    again = client.post("/api/generate", json={"label": 3, "n": 16, "seed": 1}).json()
    assert again["image"] == one["image"]  # same seed, same digits
    assert client.post("/api/generate", json={"n": 10}).status_code == 200
    mixes = [
        client.post("/api/generate", json={"n": 8, "mix": {"a": 4, "b": 9, "weight": w}}).json()["image"]
        for w in (0, 0.5, 1)
    ]
    assert len(set(mixes)) == 3
    morph = client.post("/api/morph", json={"a": 4, "b": 9, "steps": 5}).json()
    assert decoded(morph["image"]).size[0] == (5 * 30 + 2) * 3


def test_guidance_ramps_are_shown_and_taken(client):
    from vqprior.config import GUIDANCE_DEFAULT

    assert client.get("/api/info").json()["guidance"] == GUIDANCE_DEFAULT  # the run's saved default, a ramp
    ask = {"label": 3, "n": 8, "seed": 1}
    ramp = client.post("/api/generate", json={**ask, "guidance": [1, 3]})
    flat = client.post("/api/generate", json={**ask, "guidance": 1})
    assert ramp.status_code == flat.status_code == 200 and ramp.json()["image"] != flat.json()["image"]
    # the region fill (Metropolis-Hastings over the guided conditionals) takes a ramp too
    erase = {"test_index": 5, "keep": "bottom", "samples": 2, "label": 3, "guidance": [1, 3]}
    assert client.post("/api/complete", json=erase).status_code == 200


def test_complete_a_drawing_and_a_test_digit(client):
    out = client.post("/api/complete", json={"image": data_url(stroke()), "keep_rows": 3, "samples": 4}).json()
    assert decoded(out["image"]).size[0] == (6 * 30 + 2) * 3  # original, kept part, 4 completions
    assert len(out["posterior"]) == 10 and abs(sum(p["p"] for p in out["posterior"]) - 1) < 1e-6
    assert client.post("/api/complete", json={"test_index": 5, "keep_rows": 0, "samples": 2}).status_code == 200
    assert out["exact"] and out["columns"][:2] == ["original", "kept"]


def test_erase_any_part_of_a_test_digit_and_regenerate_it(client):
    digit = client.get("/api/test-digit", params={"index": 3}).json()["image"]
    assert decoded(digit).size == (28, 28)
    mask = np.ones((28, 28), int)
    mask[12:20, 4:24] = 0
    out = client.post("/api/complete", json={"test_index": 3, "mask": mask.tolist(), "samples": 3, "sweeps": 1}).json()
    assert not out["exact"] and decoded(out["image"]).size[0] == (5 * 30 + 2) * 3
    assert len(out["posterior"]) == 10
    bottom = client.post("/api/complete", json={"test_index": 3, "keep": "bottom", "samples": 1, "sweeps": 1})
    assert bottom.status_code == 200 and not bottom.json()["exact"]
    assert client.get("/api/test-digit", params={"index": 10**6}).status_code == 400


def test_score_an_upload_of_any_size_and_mode(client):
    sixteen = (np.linspace(0, 65535, 56 * 56).reshape(56, 56)).astype(np.uint16)
    out = client.post("/api/score", files={"file": ("big.png", png_bytes(sixteen), "image/png")}).json()
    assert (
        out["code_bits"] > 0
        and out["best_class"] in [str(d) for d in range(10)]
        and "resized to 28x28" in out["notice"]
    )
    assert isinstance(out["out_of_distribution"], bool) and out["ood_threshold"] > 0
    assert out["out_of_distribution"] == (out["code_bits"] > out["ood_threshold"])


BAD = [
    ("/api/generate", {"n": 0}, "n must be in"),
    ("/api/generate", {"n": 1000}, "n must be in"),
    ("/api/generate", {"n": 2.5}, "n must be an integer"),
    ("/api/generate", {"temperature": -1}, "temperature"),
    ("/api/generate", {"temperature": "hot"}, "temperature must be a number"),
    ("/api/generate", {"guidance": 1e9}, "guidance"),
    ("/api/generate", {"guidance": [1, 2, 3]}, "[first, last]"),
    ("/api/generate", {"guidance": [1, "x"]}, "guidance must be a number"),
    ("/api/generate", {"guidance": "1.25:x"}, "guidance must be a number"),  # what the page sends for a typo
    ("/api/generate", {"seed": -1}, "seed"),
    ("/api/generate", {"label": 12}, "label must be in 0..9"),
    ("/api/generate", {"label": True}, "label must be an integer"),
    ("/api/generate", {"mix": [4, 9]}, "mix must be"),
    ("/api/generate", {"mix": {"a": 4}}, "two classes"),
    ("/api/generate", {"mix": {"a": 4, "b": 9, "weight": 2}}, "weight"),
    ("/api/morph", {"a": 4, "b": 9, "steps": 500}, "steps"),
    ("/api/morph", {"a": 4}, "two classes"),
    ("/api/complete", {"image": "not a url"}, "data URL"),
    ("/api/complete", {"image": "data:image/png;base64,@@@"}, "base64"),
    ("/api/complete", {"image": "data:image/png;base64," + base64.b64encode(b"text").decode()}, "not a readable image"),
    ("/api/complete", {"test_index": 10**9}, "test_index"),
    ("/api/complete", {"image": None}, "data URL"),
    ("/api/complete", {"test_index": 1, "keep_rows": 99}, "keep_rows"),
    ("/api/complete", {"test_index": 1, "samples": 0}, "samples"),
    ("/api/complete", {"test_index": 1, "mask": [[1] * 28] * 28}, "keeps every code position"),
    ("/api/complete", {"test_index": 1, "mask": [[0] * 28] * 28}, "keeps nothing"),
    ("/api/complete", {"test_index": 1, "mask": [[1] * 27] * 28}, "must match the image"),
    ("/api/complete", {"test_index": 1, "mask": [[2] * 28] * 28}, "0 (erased) or 1"),
    ("/api/complete", {"test_index": 1, "mask": [[1] * 28, [1] * 27]}, "same length"),
    ("/api/complete", {"test_index": 1, "mask": "all"}, "list of rows"),
    ("/api/complete", {"test_index": 1, "keep": "middle"}, "keep must be one of"),
    ("/api/complete", {"test_index": 1, "keep": "left", "sweeps": 99}, "sweeps"),
]


@pytest.mark.parametrize(
    "path,body,message", BAD, ids=[f"{p.split('/')[-1]}-{m.split()[0]}-{i}" for i, (p, _, m) in enumerate(BAD)]
)
def test_bad_json_is_a_clear_4xx(client, path, body, message):
    response = client.post(path, json=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_bad_requests_of_other_shapes(client):
    assert (
        client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert client.post("/api/generate", json=[1, 2]).json()["error"] == "the request body must be a JSON object"
    assert client.get("/api/generate").status_code == 405
    assert client.post("/api/score", content=b"").json()["error"] == "no image in the request"
    big = client.post("/api/score", files={"file": ("big.png", b"\0" * (MAX_UPLOAD + 10), "image/png")})
    assert big.status_code == 413
    chunked = client.post(
        "/api/score", content=iter([b"\0" * (1 << 20)] * 5)
    )  # no Content-Length: read in chunks, cut at the limit
    assert chunked.status_code == 413 and "over the limit" in chunked.json()["error"]
    huge_json = client.post(
        "/api/generate", content=iter([b" " * (1 << 20)] * 7), headers={"content-type": "application/json"}
    )
    assert huge_json.status_code == 413
    text = client.post("/api/score", files={"file": ("a.png", b"hello", "image/png")})
    assert text.status_code == 400 and "not a readable image" in text.json()["error"]
    assert (
        client.post("/api/score", files={"other": ("a.png", b"x", "image/png")})
        .json()["error"]
        .startswith("the form needs a file")
    )


def test_the_server_survives_200_malformed_requests_in_a_row(client):
    rng = np.random.default_rng(0)
    paths = ["/api/generate", "/api/morph", "/api/complete", "/api/score"]
    for i in range(200):
        path = paths[i % 4]
        junk = bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
        kind = i % 3
        if kind == 0:
            response = client.post(path, content=junk, headers={"content-type": "application/json"})
        elif kind == 1:
            response = client.post(
                path, json={"n": float(rng.normal() * 1e6), "label": int(rng.integers(-5, 50)), "image": junk.hex()}
            )
        else:
            response = client.post(path, files={"file": ("x", junk, "image/png")})
        assert 400 <= response.status_code < 500, (i, path, response.text)
    assert client.post("/api/generate", json={"n": 4}).status_code == 200


def test_a_slow_request_does_not_block_the_page(client):
    service = client.app.state.service
    service.lock.acquire()  # as if a long generation held the model
    try:
        result = {}
        worker = threading.Thread(target=lambda: result.setdefault("r", client.post("/api/generate", json={"n": 4})))
        worker.start()
        answers = {}
        asker = threading.Thread(
            target=lambda: answers.update(info=client.get("/api/info").status_code, page=client.get("/").status_code)
        )
        asker.start()
        asker.join(60)  # only a guard against a hang: the answers must come while the model is still held
        assert answers == {"info": 200, "page": 200} and worker.is_alive()
    finally:
        service.lock.release()
    worker.join(30)
    assert result["r"].status_code == 200


def test_serve_command_errors_are_one_line(run_dir, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        result = runner.invoke(
            cli, ["serve", "--name", "t", "--out-dir", str(run_dir.parent), "--port", str(port), "--device", "cpu"]
        )
        assert result.exit_code == 2 and "choose another --port" in result.output
    finally:
        taken.close()
    result = runner.invoke(cli, ["serve", "--name", "nope", "--out-dir", str(run_dir.parent)])
    assert result.exit_code == 2 and "no finished run" in result.output
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the extra not installed
    result = runner.invoke(cli, ["serve", "--name", "t", "--out-dir", str(run_dir.parent)])
    assert result.exit_code == 2 and "pip install 'vqprior[serve]'" in result.output


# ------------------------------------------------------------------ the real page in headless Chromium


def chromium_and_driver():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_page_in_a_real_browser(run_dir, tmp_path):
    browser, driver_path = chromium_and_driver()
    if not (browser and driver_path):
        pytest.skip("no chromium + chromedriver here (CI installs them: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    served = Path(os.environ.get("VQPRIOR_SERVE_RUN", run_dir))
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vqprior",
            "serve",
            "--name",
            served.name,
            "--out-dir",
            str(served.parent),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1100",
    ):
        options.add_argument(flag)
    page = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.2)
        page = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
        page.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(page, 30)
        wait.until(lambda d: "codes" in d.find_element(By.ID, "run-info").text)
        assert "GatedPixelCNN" in page.find_element(By.ID, "run-info").text  # the header names the prior kind
        # no panel starts empty: the page draws a grid and a mix on its own
        wait.until(lambda d: (d.find_element(By.ID, "generate-img").get_attribute("src") or "").startswith("data:"))
        wait.until(lambda d: (d.find_element(By.ID, "mix-img").get_attribute("src") or "").startswith("data:"))
        first = page.find_element(By.ID, "generate-img").get_attribute("src")
        page.find_element(By.ID, "new-seed-btn").click()
        wait.until(lambda d: d.find_element(By.ID, "generate-img").get_attribute("src") != first)
        assert page.find_element(By.ID, "generate-dl").get_attribute("href").startswith("data:image/png")
        t0 = time.perf_counter()
        page.find_element(By.ID, "generate-btn").click()
        wait.until(
            lambda d: (d.find_element(By.ID, "generate-img").get_attribute("src") or "").startswith("data:image/png")
        )
        generate_seconds = time.perf_counter() - t0
        canvas = page.find_element(By.ID, "canvas")
        ActionChains(page).move_to_element_with_offset(canvas, 0, -90).click_and_hold().move_by_offset(
            0, 60
        ).move_by_offset(0, 60).move_by_offset(0, 60).release().perform()
        t0 = time.perf_counter()
        page.find_element(By.ID, "complete-btn").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#posterior .bar")) == 10)
        complete_seconds = time.perf_counter() - t0
        # a test digit is painted on the canvas (not a caption); the eraser marks a band to regenerate
        page.find_element(By.ID, "test-btn").click()
        wait.until(lambda d: d.execute_script("return testDigit") is not None)
        lit = page.execute_script(
            "const d = ctx.getImageData(0, 0, 280, 280).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return n;"
        )
        assert 3000 < lit < 40000, f"{lit} bright pixels: the test digit is not drawn on the canvas"
        page.find_element(By.CSS_SELECTOR, "input[name=tool][value=eraser]").click()
        ActionChains(page).move_to_element_with_offset(canvas, -100, 0).click_and_hold().move_by_offset(
            100, 0
        ).move_by_offset(100, 0).release().perform()
        t0 = time.perf_counter()
        page.find_element(By.ID, "complete-btn").click()
        wait.until(lambda d: "drafts" in d.find_element(By.ID, "complete-caption").text)  # a band: not a prefix
        erase_seconds = time.perf_counter() - t0
        upload = tmp_path / "digit.png"
        Image.fromarray(stroke()).save(upload)
        page.find_element(By.ID, "score-file").send_keys(str(upload))
        wait.until(lambda d: "bits for its code map" in d.find_element(By.ID, "score-result").text)
        page.find_element(By.ID, "mix-weight").send_keys(Keys.ARROW_RIGHT)  # moving the slider re-draws the mix
        wait.until(lambda d: (d.find_element(By.ID, "mix-img").get_attribute("src") or "").startswith("data:image/png"))
        assert (
            not page.find_element(By.ID, "generate-error").text and not page.find_element(By.ID, "complete-error").text
        )
        print(
            f"page: 16 digits in {generate_seconds:.2f} s, completion of a drawing in {complete_seconds:.2f} s,"
            f" erase-and-fill of a band in {erase_seconds:.2f} s (after load)"
        )
        page.set_window_size(420, 900)  # a phone: nothing scrolls sideways
        wait.until(lambda d: d.execute_script("return window.innerWidth") <= 420)
        assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.set_window_size(1400, 1100)
        shot = tmp_path / "page.png"
        page.save_screenshot(str(shot))
        with Image.open(shot) as img:
            assert np.asarray(img.convert("L")).std() > 10  # not blank
        if os.environ.get("VQPRIOR_SCREENSHOT"):
            shutil.copy(shot, os.environ["VQPRIOR_SCREENSHOT"])
    finally:
        if page is not None:
            page.quit()
        server.terminate()
        server.wait(10)
