"""`vqprior complete`, `score`, `classify`, `serve` and `pretrained`: using a finished run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape

from ..config import DRAFTS, MAX_SEED, SWEEPS
from ..config_checks import check_sampling, validate_run_name
from ..errors import UserError
from ..trust import trusting_code
from .common import (
    GUIDANCE_HELP,
    ConsoleReporter,
    Device,
    Name,
    OutDir,
    Trust,
    _one_line_errors,
    _run_dir_of,
    app,
    console,
    guidance_flag,
)

Inputs = Annotated[Optional[list[str]], typer.Argument(help="Image files, folders or .npz files (key 'images').")]
FromSplit = Annotated[Optional[str], typer.Option("--from", help="Use the run's own images instead: train or test.")]
FromN = Annotated[int, typer.Option("--n", "-n", min=1, help="With --from: how many images.")]


def _run_and_inputs(name, out_dir, device, trust_code, inputs, from_split, n):
    """The finished run and the images a command works on: (run, images, labels, names)."""
    from ..api import load
    from ..inputs import read_inputs

    run = load(_run_dir_of(name, out_dir), device, trust_code=trust_code)
    notices: list[str] = []
    images, labels, names = read_inputs(inputs or [], from_split, n, run.image_shape, lambda: run.data, notices)
    for notice in notices:
        console.print(f"[yellow]notice:[/] {escape(notice)}")
    return run, images, labels, names


def _api_command(body, trust_code: bool = False) -> None:
    with _one_line_errors(), trusting_code(trust_code):
        body()


@app.command("complete")
def complete(
    inputs: Inputs = None,
    name: Name = None,
    out_dir: OutDir = "artifacts",
    from_split: FromSplit = None,
    n: FromN = 8,
    keep_rows: Annotated[
        Optional[int], typer.Option(help="Code-map rows to keep from the top (default: half); exact.")
    ] = None,
    keep: Annotated[
        Optional[str], typer.Option("--keep", help="Keep one half: top (exact), bottom, left or right.")
    ] = None,
    keep_mask: Annotated[
        Optional[Path],
        typer.Option(help="Black/white picture, the image's size or the code map's: white = kept."),
    ] = None,
    erase: Annotated[
        Optional[str], typer.Option(help="Erase a box x0,y0,x1,y1 (pixels, end exclusive) and fill it in.")
    ] = None,
    sweeps: Annotated[
        int,
        typer.Option(
            min=0,
            max=100,
            help="MCMC sweeps after the drafts, for a region that is not a prefix in an order the prior learned.",
        ),
    ] = SWEEPS,
    drafts: Annotated[
        int,
        typer.Option(min=1, max=64, help="Ancestral drafts per class for a region that is not a top prefix."),
    ] = DRAFTS,
    samples: Annotated[int, typer.Option(min=1, max=64, help="Completions per image.")] = 4,
    label: Annotated[
        Optional[int], typer.Option(help="Class to complete as (default: inferred from the kept part).")
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature (> 0; default: the run's sample.temperature).")
    ] = None,
    guidance: Annotated[
        Optional[str], typer.Option(help=f"The {GUIDANCE_HELP} (default: the run's sample.guidance).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed.")] = 0,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Folder to write completions.png and completions.npz into (default: <run>/complete/, replaced "
            "each call).",
        ),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace the --out folder if it exists.")] = False,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Keep part of each image and sample the rest: original | kept part | completions, one row per image.

    The top rows (--keep-rows, --keep top) are continued exactly, and so is a kept bottom, left or right part when
    the prior learned that drawing order; any other region (--keep bottom/left/right, --keep-mask, --erase) is
    filled by importance-resampled drafts from the prior (--drafts per class), then --sweeps rounds of
    Metropolis-Hastings if asked; a masked prior (prior.kind = "masked") fills any region by its own parallel
    decoding.

    Example: vqprior complete --from test --n 4 --erase 8,12,20,20"""

    def body():
        from torchvision.utils import save_image

        from ..artifacts import writing_folder

        scale = guidance_flag(guidance)
        check_sampling(temperature, scale)
        given = [v for v in (keep_rows, keep, keep_mask, erase) if v is not None]
        if len(given) > 1:
            raise UserError("give one of --keep-rows, --keep, --keep-mask, --erase")
        if out is not None:
            from ..generated_files import check_output_folder

            check_output_folder(out, replace)
        run, images, _, names = _run_and_inputs(name, out_dir, device, trust_code, inputs, from_split, n)
        region = keep
        if keep_mask is not None:
            from ..datasets.pixels import read_image

            pixels, _ = read_image(keep_mask, 1)
            region = pixels[..., 0] if pixels.ndim == 3 else pixels
        elif erase is not None:
            from ..masks import erase_box

            region = erase_box(erase, tuple(run.image_shape[1:]))
        done = run.complete(
            images,
            keep_rows,
            samples,
            label,
            temperature,
            scale,
            seed,
            keep=region,
            sweeps=sweeps,
            drafts=drafts,
            reporter=ConsoleReporter(),
        )
        rows = done.panels().flatten(0, 1)
        target = run.run_folder.completions if out is None else Path(out).expanduser()
        with writing_folder(target, *([] if out is None else ["choose a writable --out folder"])) as folder:
            save_image(rows.float() / 255, folder / "completions.png", nrow=samples + 2, padding=2, pad_value=0.5)
            extra = (
                {} if done.posterior is None else {"posterior": done.posterior.numpy(), "labels": done.labels.numpy()}
            )
            np.savez_compressed(
                folder / "completions.npz",
                originals=done.originals.numpy(),
                images=done.images.numpy(),
                codes=done.codes.numpy(),
                keep=done.keep.numpy(),
                **extra,
            )
        how = {
            "exact": "exact: a kept prefix" + ("" if done.order == "raster" else f" in the {done.order} order"),
            "parallel": "parallel decoding of the masked prior",
            "mcmc": f"{drafts} drafts per class, {sweeps} MCMC sweeps",
        }[done.method]
        for i, who in enumerate(names):
            if done.posterior is not None:
                top = done.posterior[i].topk(min(3, run.num_classes))
                guess = ", ".join(
                    f"{run.class_names[c]} {p:.0%}" for p, c in zip(top.values.tolist(), top.indices.tolist())
                )
                console.print(f"{who}: class posterior from the kept part: {guess}")
        kept = int(done.keep[0].sum())
        console.print(
            f"[green]completions[/] ({kept} of {run.grid[0] * run.grid[1]} codes kept in the first image; {how}) "
            f"-> {target / 'completions.png'}"
        )

    _api_command(body, trust_code)


@app.command("score")
def score(
    inputs: Inputs = None,
    name: Name = None,
    out_dir: OutDir = "artifacts",
    from_split: FromSplit = None,
    n: FromN = 1000,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Per image: bits of its codes under the prior, best class, reconstruction error, image-level bound (CSV, JSON, histogram).

    Example: vqprior score --from test --n 100"""

    def body():
        import csv

        from ..artifacts import save_json, writing_folder
        from ..report.plots import histogram

        run, images, _, names = _run_and_inputs(name, out_dir, device, trust_code, inputs, from_split, n)
        result = run.score(images)
        with writing_folder(run.run_folder.scores) as out:
            with open(out / "scores.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["input", "code_bits", "best_class", "recon_mse", "image_bits_bound"])
                for i, who in enumerate(names):
                    best = int(result["best_class"][i])
                    writer.writerow(
                        [
                            who,
                            f"{result['code_bits'][i]:.3f}",
                            run.class_names[best] if best >= 0 else "",
                            f"{result['recon_mse'][i]:.6f}",
                            f"{result['image_bits_bound'][i]:.2f}",
                        ]
                    )
            save_json(out / "scores.json", {"inputs": names, **{k: v.tolist() for k, v in result.items()}})
            (out / "histogram.png").write_bytes(
                histogram(result["code_bits"].tolist(), "bits of each input's code map", "bits")
            )
        bits = result["code_bits"]
        console.print(
            f"{len(names)} inputs: code bits median {bits.median():.1f} (min {bits.min():.1f}, max {bits.max():.1f}); "
            f"higher = less like the training data -> {run.run_folder.scores / 'scores.csv'}"
        )

    _api_command(body, trust_code)


@app.command("classify")
def classify(
    inputs: Inputs = None,
    name: Name = None,
    out_dir: OutDir = "artifacts",
    from_split: FromSplit = None,
    n: FromN = 1000,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Use the class-conditional prior as a generative classifier: argmax_c p(codes | c) p(c).

    Example: vqprior classify --from test --n 500"""

    def body():
        import torch

        # with --from: the split's own labels
        run, images, labels, names = _run_and_inputs(name, out_dir, device, trust_code, inputs, from_split, n)
        chunks = list(range(0, len(images), 500))
        parts = [run.classify(images[i : i + 500]) for i in ConsoleReporter().track(chunks, len(chunks), "classify")]
        pred, post = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        if labels is not None:
            console.print(
                f"generative classifier: {(pred == labels).double().mean():.2%} of {len(labels)} {from_split} images correct"
            )
        else:
            for who, c, p in zip(names, pred.tolist(), post.max(1).values.tolist()):
                console.print(f"{who}: {run.class_names[c]} ({p:.0%})")

    _api_command(body, trust_code)


@app.command("serve")
def serve(
    name: Name = None,
    out_dir: OutDir = "artifacts",
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default: only this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    device: Device = "auto",
    trust_code: Trust = False,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Serve the MNIST run shipped with the package (no training).")
    ] = False,
) -> None:
    """A local page over a finished run: generate, mix, morph, complete or repair a digit, score an image.

    Needs the serve extra (pip install 'vqprior\\[serve]').

    Example: vqprior serve --pretrained"""
    with _one_line_errors("stopped"), trusting_code(trust_code):
        try:
            import uvicorn

            from ..serve.app import allowed_hosts, create_app
        except ImportError as e:
            raise UserError(
                f"vqprior serve needs the serve extra ({e.name} is missing): pip install 'vqprior[serve]'"
            ) from None
        import socket

        if pretrained:
            from ..pretrained import folder

            run_dir = folder("mnist")
        else:
            run_dir = _run_dir_of(name, out_dir)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # one line for a taken port
            try:
                probe.bind((host, port))
            except OSError as e:
                raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
        console.print(f"loading {run_dir} (the models, its test images and the page's thresholds) ...")
        started = time.perf_counter()
        web = create_app(run_dir, device, trust_code, hosts=allowed_hosts(host))
        config = uvicorn.Config(web, host=host, port=port, log_level="warning")
        server = uvicorn.Server(config)
        ready = server.startup

        async def startup_then_say_so(*args, **kwargs):  # the URL once the socket listens, not before
            await ready(*args, **kwargs)
            console.print(
                f"[green]serving[/] {run_dir} at [bold]http://{host}:{port}/[/] "
                f"(ready in {time.perf_counter() - started:.0f} s; Ctrl-C stops)"
            )

        server.startup = startup_then_say_so
        server.run()


@app.command("pretrained")
def pretrained_run(
    which: Annotated[str, typer.Argument(help="Which shipped run: mnist.")] = "mnist",
    out_dir: OutDir = "artifacts",
    name: Annotated[Optional[str], typer.Option(help="Run name to copy it to (default: mnist-pretrained).")] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing folder of that name.")] = False,
) -> None:
    """Copy the pretrained run shipped with the package to <out-dir>/<name>: every command works on it at once.

    It was made by the default `vqprior run` on MNIST and evaluated by `vqprior eval` (PRETRAINED.json says how).

    Then: vqprior generate --label 3 --out 3s.png

    Example: vqprior pretrained mnist"""
    with _one_line_errors():
        from ..pretrained import install

        if name is not None:
            validate_run_name(name)
        target = install(which, Path(out_dir), name, replace)
        made = json.loads((target / "PRETRAINED.json").read_text())
        ev = made["eval"]
        console.print(
            f"[green]pretrained {which}[/] -> {target} (vqprior {made['versions']['vqprior']}; samples at "
            f"{ev['fd_ratio_worst_space']:.2f}x the floor in the worst feature space, conditional accuracy "
            f"{ev['conditional_accuracy']:.1%}, {ev['test_bits_per_map']:.1f} bits/map)"
        )
        console.print(
            f"next: vqprior generate --name {target.name} --label 3 --out 3s.png | vqprior serve --name {target.name} | "
            f"python -c \"import vqprior; vqprior.load('{target}')\""
        )
