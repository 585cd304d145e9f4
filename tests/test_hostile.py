"""A shared run folder is hostile ground: planted links, special files, forged manifests, configs and weights, and
malformed values from users, files, the environment and HTTP. Each case ends with one line (or a 4xx) and touches
nothing outside the run folder; nothing is half-written and nothing that was there is lost."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vqprior.cli import app
from vqprior.errors import UserError

runner = CliRunner()
VICTIM_TEXT = "private: this file is outside the run folder\n"


@pytest.fixture(scope="module")
def finished_run(finished_tiny_run):
    return finished_tiny_run


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of the finished run in tmp/out/t, and a victim file and folder outside it."""
    shutil.copytree(finished_run, tmp_path / "out" / "t")
    (tmp_path / "victim.txt").write_text(VICTIM_TEXT)
    (tmp_path / "victim_dir").mkdir()
    (tmp_path / "victim_dir" / ".stage1.pt.1.999999.tmp").write_text(VICTIM_TEXT)  # named like a dead writer's file
    (tmp_path / "victim_dir" / ".stage3.tmp-999999").mkdir()
    return tmp_path / "out" / "t"


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def refresh_manifests(run_dir: Path) -> None:
    """What a forger does after editing a file: recompute every manifest's hashes so the edit passes the checks."""
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for stage in (1, 2, 3, 4):
        path = run_dir / f"stage{stage}" / "manifest.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        m["outputs"] = {
            name: digest(run_dir / f"stage{stage}" / name) if (run_dir / f"stage{stage}" / name).is_file() else d
            for name, d in m["outputs"].items()
        }
        for record in m.get("inputs", {}).values():
            source = run_dir / record["path"]
            if source.is_file():
                record["sha256"] = digest(source)
        path.write_text(json.dumps(m))


def cli(run_dir: Path, *args: str, tiny: bool = True, env: dict | None = None):
    out = run_dir.parent
    k = 2 if args[0] == "run-stage" else 1
    where = [*args[:k], *tiny_args(out), *args[k:]] if tiny else [*args, "--out-dir", str(out), "--name", run_dir.name]
    return runner.invoke(app, where, catch_exceptions=False, env=env)


def one_line(result, message: str, code: int = 2) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == code and len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def victims_untouched(tmp_path: Path) -> None:
    assert (tmp_path / "victim.txt").read_text() == VICTIM_TEXT
    assert (tmp_path / "victim_dir" / ".stage1.pt.1.999999.tmp").read_text() == VICTIM_TEXT
    assert (tmp_path / "victim_dir" / ".stage3.tmp-999999").is_dir()


# ------------------------------------------------------------------ planted links and special files


def plant_link(rel: str, target: str):
    def setup(run_dir: Path, tmp: Path) -> None:
        link = run_dir / rel
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink(missing_ok=True)
        link.symlink_to(tmp / target)

    return setup


def plant_fifo(run_dir: Path, tmp: Path) -> None:
    os.mkfifo(run_dir / "stage4" / "extra.png")


def plant_private_picture(run_dir: Path, tmp: Path) -> None:
    Image.fromarray(np.full((28, 28), 7, np.uint8)).save(tmp / "victim.png")
    plant_link("stage1/reconstructions.png", "victim.png")(run_dir, tmp)


LINK_CASES = [
    # (id, setup, command, tiny args?)
    ("report-tmp-link/report", plant_link(".report.html.tmp", "victim.txt"), ["report"], False),
    ("report-tmp-link/run", plant_link(".report.html.tmp", "victim.txt"), ["run", "--per-class", "1"], True),
    (
        "report-tmp-link/eval",
        plant_link(".report.html.tmp", "victim.txt"),
        ["eval", "--n", "100", "--device", "cpu"],
        False,
    ),
    ("report-html-link/report", plant_link("report.html", "victim.txt"), ["report"], False),
    ("lock-link/run-stage-4", plant_link(".lock", "victim.txt"), ["run-stage", "4"], True),
    ("lock-link/eval", plant_link(".lock", "victim.txt"), ["eval", "--n", "100", "--device", "cpu"], False),
    ("checkpoints-link/run", plant_link(".checkpoints", "victim_dir"), ["run", "--per-class", "1"], True),
    ("stage-folder-link/run-stage-4", plant_link("stage4", "victim_dir"), ["run-stage", "4"], True),
    ("progress-link/run-stage-3", plant_link("progress", "victim_dir"), ["run-stage", "3"], True),
    ("eval-link/eval", plant_link("eval", "victim_dir"), ["eval", "--n", "100", "--device", "cpu"], False),
    ("picture-link/report", plant_private_picture, ["report"], False),
    (
        "weights-link/score",
        plant_link("stage3/prior_last.safetensors", "victim.txt"),
        ["score", "--from", "test", "--n", "2", "--device", "cpu"],
        False,
    ),
]


@pytest.mark.parametrize("case_id,setup,args,tiny", LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_a_planted_link_is_refused_and_nothing_outside_is_touched(case_id, setup, args, tiny, run, tmp_path):
    setup(run, tmp_path)
    before = snapshot(run)
    result = cli(run, *args, tiny=tiny)
    one_line(result, "is a symbolic link")
    victims_untouched(tmp_path)
    assert snapshot(run) == before, "the run folder changed"
    assert not (tmp_path / "out" / "t" / "report.html").is_symlink() or case_id.startswith("report-html")
    assert (
        b"private" not in (run / "report.html").read_bytes()
        if (run / "report.html").is_file() and not (run / "report.html").is_symlink()
        else True
    )


def test_a_fifo_in_the_run_folder_is_refused_not_waited_on(run, tmp_path):
    plant_fifo(run, tmp_path)
    started = time.perf_counter()
    one_line(cli(run, "report", tiny=False), "FIFO")
    assert time.perf_counter() - started < 30


def test_the_python_api_refuses_a_run_folder_with_a_link(run, tmp_path):
    import vqprior

    plant_link("stage2/test_labels.npy", "victim.txt")(run, tmp_path)
    with pytest.raises(UserError, match="is a symbolic link"):
        vqprior.load(run, device="cpu")


def test_runs_lists_a_run_with_a_link_as_refused_and_the_others_as_usual(run, tmp_path, finished_run):
    shutil.copytree(finished_run, run.parent / "clean")
    plant_link("eval", "victim_dir")(run, tmp_path)
    result = runner.invoke(app, ["runs", "--out-dir", str(run.parent)], catch_exceptions=False)
    assert result.exit_code == 0 and "t: refused" in result.output and "clean" in result.output, result.output


# ------------------------------------------------------------------ forged manifests: paths outside the run folder


def forge_manifest(stage: int, change):
    def setup(run_dir: Path, tmp: Path) -> None:
        path = run_dir / f"stage{stage}" / "manifest.json"
        m = json.loads(path.read_text())
        change(m)
        path.write_text(json.dumps(m))

    return setup


MANIFEST_CASES = [
    (
        "output-proc-file",
        forge_manifest(1, lambda m: m["outputs"].__setitem__("/proc/self/pagemap", "0" * 64)),
        ["run-stage", "2"],
        "not a file of that stage folder",
    ),
    (
        "output-dotdot",
        forge_manifest(1, lambda m: m["outputs"].__setitem__("../../victim.txt", "0" * 64)),
        ["run-stage", "2"],
        "not a file of that stage folder",
    ),
    (
        "input-proc-file",
        forge_manifest(3, lambda m: m["inputs"]["train_codes"].__setitem__("path", "/proc/self/pagemap")),
        ["run-stage", "4"],
        "outside the run folder",
    ),
    (
        "input-dotdot",
        forge_manifest(3, lambda m: m["inputs"]["train_codes"].__setitem__("path", "../victim.txt")),
        ["run-stage", "4"],
        "outside the run folder",
    ),
    (
        "stage2-grid-infinite",
        forge_manifest(2, lambda m: m.__setitem__("grid", [float("inf"), 7])),
        ["run-stage", "3"],
        "finite",
    ),
    (
        "stage2-codebook-1e12",
        forge_manifest(2, lambda m: m.__setitem__("codebook_size", 10**12)),
        ["run-stage", "3"],
        "codebook_size",
    ),
    (
        "manifest-a-list",
        lambda r, t: (r / "stage3" / "manifest.json").write_text("[1, 2]"),
        ["run-stage", "4"],
        "not an object",
    ),
    (
        "manifest-not-utf8",
        lambda r, t: (r / "stage3" / "manifest.json").write_bytes(b'{"a": "\xff"}'),
        ["run-stage", "4"],
        "not UTF-8",
    ),
    (
        "manifest-deeply-nested",
        lambda r, t: (r / "stage3" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
        ["run-stage", "4"],
        "nested too deeply",
    ),
    (
        "manifest-outputs-a-list",
        forge_manifest(3, lambda m: m.__setitem__("outputs", [1])),
        ["run-stage", "4"],
        "wrong shape",
    ),
    (
        "manifest-inputs-strings",
        forge_manifest(3, lambda m: m.__setitem__("inputs", {"a": "b"})),
        ["run-stage", "4"],
        "wrong shape",
    ),
]


@pytest.mark.parametrize("case_id,setup,args,message", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_a_forged_manifest_is_one_line_and_quick(case_id, setup, args, message, run, tmp_path):
    setup(run, tmp_path)
    before = snapshot(run)
    started = time.perf_counter()
    one_line(cli(run, *args), message)
    assert time.perf_counter() - started < 60
    assert snapshot(run) == before
    victims_untouched(tmp_path)


# ------------------------------------------------------------------ forged values inside a run folder


def forge_config(run_dir: Path, change, stage: int = 3) -> None:
    path = run_dir / f"stage{stage}" / "config.json"
    c = json.loads(path.read_text())
    change(c)
    path.write_text(json.dumps(c))
    refresh_manifests(run_dir)


def nan_prior(run_dir: Path) -> None:
    path = run_dir / "stage3" / "prior.safetensors"
    state = load_file(str(path))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(path))
    refresh_manifests(run_dir)


def float_labels(run_dir: Path) -> None:
    path = run_dir / "stage2" / "train_labels.npy"
    np.save(path, np.load(path).astype(np.float64) + 0.5)
    refresh_manifests(run_dir)


def negative_labels(run_dir: Path) -> None:
    path = run_dir / "stage2" / "train_labels.npy"
    np.save(path, np.load(path) - 5)
    refresh_manifests(run_dir)


VALUE_CASES = [
    ("saved-grid-inf", lambda r: forge_config(r, lambda c: c.__setitem__("grid", [float("inf"), 7])), "grid size"),
    ("saved-grid-huge", lambda r: forge_config(r, lambda c: c.__setitem__("grid", [10**9, 7])), "grid size"),
    (
        "saved-prior-codebook-10^12",
        lambda r: forge_config(r, lambda c: c["prior"]["params"].__setitem__("codebook_size", 10**12)),
        "codebook_size",
    ),
    (
        "saved-vqvae-codebook-10^12",
        lambda r: forge_config(r, lambda c: c["vqvae"]["quantizer"]["params"].__setitem__("codebook_size", 10**12), 1),
        "codebook_size",
    ),
    (
        "saved-vqvae-codebook-10^12-as-runs-saved-it-before-quantizers-were-components",
        lambda r: forge_config(
            r,
            lambda c: c["vqvae"].__setitem__(
                "quantizer", {**c["vqvae"]["quantizer"]["params"], "codebook_size": 10**12}
            ),
            1,
        ),
        "codebook_size",
    ),
    (
        "saved-quantizer-of-a-wrong-shape",
        lambda r: forge_config(r, lambda c: c["vqvae"]["quantizer"].__setitem__("params", [1, 2]), 1),
        "quantizer must be",
    ),
    (
        "saved-guidance-1e6",
        lambda r: forge_config(r, lambda c: c["config"]["sample"].__setitem__("guidance", 1e6)),
        "guidance",
    ),
    (
        "saved-temperature-a-string",
        lambda r: forge_config(r, lambda c: c["config"]["sample"].__setitem__("temperature", "hot")),
        "temperature must be a number",
    ),
    (
        "saved-sample-not-a-table",
        lambda r: forge_config(r, lambda c: c["config"].__setitem__("sample", 3)),
        "not a table",
    ),
    ("nan-weights", nan_prior, "NaN"),
    ("float-labels", float_labels, "labels"),
    ("negative-labels", negative_labels, "labels"),
]


@pytest.mark.parametrize("case_id,setup,message", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_forged_values_in_a_run_folder_are_refused_by_the_api_and_the_commands(case_id, setup, message, run):
    import vqprior

    setup(run)
    with pytest.raises(UserError, match=message):
        vqprior.load(run, device="cpu")
    before = snapshot(run)
    one_line(cli(run, "complete", "--from", "test", "--n", "1", "--device", "cpu", tiny=False), "")
    assert snapshot(run) == before


def test_a_checkpoint_of_the_wrong_shape_is_one_line(run):
    (run / ".checkpoints").mkdir()
    for payload, message in (([1, 2, 3], "not a vqprior checkpoint"), ({"fingerprint": None}, "different config")):
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        (run / ".checkpoints" / "stage1.pt").write_bytes(buffer.getvalue())
        one_line(cli(run, "run-stage", "1"), message)


# ------------------------------------------------------------------ values from the user, the environment and files


def test_a_lock_file_hard_linked_outside_is_left_untouched(run, tmp_path):
    os.link(tmp_path / "victim.txt", run / ".lock")
    one_line(cli(run, "run-stage", "4"), "hard link")
    victims_untouched(tmp_path)


def test_the_rank_of_a_failing_torchrun_process_is_on_its_error_line(monkeypatch, capsys):
    import typer

    from vqprior.cli.common import _one_line_errors

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(typer.Exit), _one_line_errors():
        raise UserError("the [data] folder is empty")
    assert "error: [rank 1] the [data] folder is empty" in capsys.readouterr().err


def test_threads_are_capped_at_a_sane_multiple_of_the_cores(run):
    for value in ("10000", "100000", "1e20"):
        one_line(cli(run, "run-stage", "4", "--set", f"run.threads={value}"), "run.threads")


@pytest.mark.parametrize(
    "env", [{"RANK": "x"}, {"WORLD_SIZE": "-3"}, {"RANK": "5", "WORLD_SIZE": "2"}, {"LOCAL_WORLD_SIZE": "0"}]
)
def test_malformed_torchrun_variables_are_one_line(env, run):
    one_line(cli(run, "run-stage", "4", env=env), "torchrun")


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


NPZ_CASES = [
    ("bool", lambda: npz_bytes(images=np.ones((2, 1, 28, 28), bool)), "bool"),
    ("complex", lambda: npz_bytes(images=np.ones((2, 1, 28, 28), np.complex64)), "complex"),
    ("strings", lambda: npz_bytes(images=np.array(["a", "b"])), "<U1"),
    ("datetimes", lambda: npz_bytes(images=np.array(["2026-01-01"], dtype="datetime64[D]")), "datetime"),
    ("records", lambda: npz_bytes(images=np.zeros(2, dtype=[("a", "u1"), ("b", "f4")])), "must be uint8"),
    ("no-images", lambda: npz_bytes(images=np.zeros((0, 1, 28, 28), np.uint8)), "N >= 1"),
    ("broken-zip", lambda: npz_bytes(images=np.zeros((2, 1, 28, 28), np.uint8))[:-30], "not a readable .npz"),
    ("not-a-zip", lambda: b"PK\x03\x04 this is no zip", "not a readable .npz"),
]


@pytest.mark.parametrize("case_id,data,message", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_npz_inputs_of_the_wrong_kind_are_one_line(case_id, data, message, run, tmp_path):
    (tmp_path / "in.npz").write_bytes(data())
    one_line(cli(run, "score", str(tmp_path / "in.npz"), "--device", "cpu", tiny=False), message)


def test_a_fifo_given_as_an_image_is_refused_not_waited_on(run, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    started = time.perf_counter()
    one_line(cli(run, "score", str(tmp_path / "pipe.png"), "--device", "cpu", tiny=False), "not a regular file")
    assert time.perf_counter() - started < 30


def test_an_exif_rotated_photo_is_read_upright(tmp_path):
    from vqprior.datasets.pixels import read_image

    a = np.zeros((28, 28), np.uint8)
    a[:, :4] = 255  # a bar on the left, stored turned a quarter anticlockwise (at the bottom)
    img = Image.fromarray(np.rot90(a, 1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    img.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    upright, _ = read_image(tmp_path / "photo.jpg", 1)
    assert upright[:, :4].mean() > 200 and upright[:, -4:].mean() < 50


API_CASES = [
    ("load-none", lambda vqprior, r: vqprior.load(None), "run folder"),
    ("device-none", lambda vqprior, r: vqprior.load(r, device=None), "device must be"),
    (
        "temperature-string",
        lambda vqprior, r: vqprior.load(r, device="cpu").generate(labels=[3], temperature="1"),
        "temperature must be a number",
    ),
    (
        "label-string",
        lambda vqprior, r: vqprior.load(r, device="cpu").complete(np.zeros((1, 28, 28), np.uint8), label="3"),
        "--label",
    ),
    (
        "label-fraction",
        lambda vqprior, r: vqprior.load(r, device="cpu").complete(np.zeros((1, 28, 28), np.uint8), label=3.5),
        "--label",
    ),
    (
        "labels-on-the-meta-device",
        lambda vqprior, r: vqprior.load(r, device="cpu").generate(labels=torch.tensor([3], device="meta")),
        "meta device",
    ),
    (
        "images-ragged",
        lambda vqprior, r: vqprior.load(r, device="cpu").encode([np.zeros((28, 28)), np.zeros((3, 3))]),
        "images must be",
    ),
    (
        "codes-of-strings",
        lambda vqprior, r: vqprior.load(r, device="cpu").decode(np.full((1, 7, 7), "a")),
        "codes must be",
    ),
    (
        "decode-no-maps",
        lambda vqprior, r: vqprior.load(r, device="cpu").decode(np.zeros((0, 7, 7), np.int64)),
        "N >= 1",
    ),
    (
        "integer-images-out-of-range",
        lambda vqprior, r: vqprior.load(r, device="cpu").encode(np.full((1, 28, 28), 300, np.int64)),
        "0..255",
    ),
]


@pytest.mark.parametrize("case_id,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_the_api_refuses_wrong_types_in_one_line(case_id, call, message, finished_run):
    import vqprior

    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        call(vqprior, finished_run)


def test_integer_images_are_read_as_0_to_255(finished_run):
    import vqprior

    r = vqprior.load(finished_run, device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28))
    assert torch.equal(r.encode(x), r.encode(x.astype(np.uint8)))


# ------------------------------------------------------------------ the page


@pytest.fixture
def client(finished_run):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vqprior.serve.app import create_app

    app_ = create_app(finished_run, device="cpu", hosts=("testserver",))
    with TestClient(app_) as c:
        yield c


@pytest.mark.parametrize(
    "body",
    [
        {"n": 10**400},
        {"seed": -(10**400)},
        {"temperature": 10**400},
        {"label": 10**400},
        {"mix": {"a": 1, "b": 2, "weight": 10**400}},
    ],
)
def test_huge_integers_are_a_400(client, body):
    r = client.post("/api/generate", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "must be" in r.json()["error"]


def test_deeply_nested_json_is_a_400(client):
    r = client.post(
        "/api/generate", content="[" * 200_000 + "]" * 200_000, headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 413) and "error" in r.json()


def test_a_host_header_the_server_was_not_started_for_is_refused(client):
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/info").status_code == 200


def test_an_upload_of_too_many_pixels_is_refused_before_it_is_decoded(client, monkeypatch):
    img = Image.new("I;16", (10_000, 8_800))  # 88 Mpx, a few hundred KB as a PNG
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    r = client.post("/api/score", files={"file": ("big.png", buffer.getvalue(), "image/png")})
    assert r.status_code == 400 and "pixels" in r.json()["error"]
    assert (10_000, 8_800) not in decoded  # refused from its header: its pixels were never decoded


def test_a_chunked_upload_over_the_limit_is_cut_without_being_spooled(client):
    from vqprior.serve.app import MAX_UPLOAD

    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(MAX_UPLOAD // (1 << 16) + 8):
            yield b"\0" * (1 << 16)

    r = client.post("/api/score", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413


def test_a_bad_request_is_answered_while_the_model_is_busy(client):
    service = client.app.state.service
    with service.lock:  # another request holds the model
        result = {}

        def bad():
            result["r"] = client.post("/api/generate", json={"n": -1})

        t = threading.Thread(target=bad)
        t.start()
        t.join(10)
        assert not t.is_alive() and result["r"].status_code == 400


def test_the_report_endpoint_never_serves_a_link(finished_run, tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vqprior.serve.app import create_app

    run_dir = tmp_path / "t"
    shutil.copytree(finished_run, run_dir)
    (tmp_path / "victim.txt").write_text(VICTIM_TEXT)
    with TestClient(create_app(run_dir, device="cpu", hosts=("testserver",))) as c:
        (run_dir / "report.html").unlink(missing_ok=True)
        (run_dir / "report.html").symlink_to(tmp_path / "victim.txt")  # planted while the server runs
        r = c.get("/report")
        assert r.status_code == 403 and "private" not in r.text
    with pytest.raises(UserError, match="symbolic link"):  # and a server is not started over such a folder
        create_app(run_dir, device="cpu")


def test_two_report_writers_at_once_do_not_collide(run):
    from vqprior.report.html import write_report

    errors = []

    def write():
        try:
            for _ in range(5):
                write_report(run)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and not list(run.glob(".report.html*"))
    assert (run / "report.html").read_text().startswith("<!doctype html>")


def test_a_corrupt_picture_or_metrics_file_is_left_out_of_the_report_with_a_note(run):
    (run / "stage1" / "reconstructions.png").write_bytes(b"\x89PNG garbage")
    (run / "stage3" / "metrics.json").write_text("{not json")
    result = cli(run, "report", tiny=False)
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "Left out of this report" in html and "reconstructions.png" in html and "metrics.json" in html


def test_the_report_and_runs_survive_a_forged_codebook_size(run):
    forge_manifest(2, lambda m: m.__setitem__("codebook_size", 10**12))(run, run)
    result = cli(run, "report", tiny=False)
    assert result.exit_code == 0 and "codebook_size" in (run / "report.html").read_text(), result.output
    listed = runner.invoke(app, ["runs", "--out-dir", str(run.parent)], catch_exceptions=False)
    assert listed.exit_code == 0 and "Traceback" not in listed.output


def test_an_eval_json_of_the_wrong_shape_is_left_out_of_the_report(run):
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "eval.json").write_text(
        json.dumps({"samples": {"fd_ratio": "high"}, "spaces": {}, "n_samples": []})
    )
    result = cli(run, "report", tiny=False)
    assert result.exit_code == 0 and "could not be shown" in (run / "report.html").read_text(), result.output


def test_score_reads_an_image_of_another_size_the_way_the_page_does(run, tmp_path):
    from vqprior.datasets.pixels import fit_to

    big = np.zeros((64, 64), np.uint8)
    big[8:56, 28:36] = 255
    Image.fromarray(big).save(tmp_path / "big.png")
    result = cli(run, "score", str(tmp_path / "big.png"), "--device", "cpu", tiny=False)
    assert result.exit_code == 0 and "resized to 28x28" in result.output, result.output
    small, notice = fit_to(big, 28, 28)
    assert small.shape == (28, 28) and notice == "resized to 28x28" and small[:, 12:16].mean() > small[:, :4].mean()
