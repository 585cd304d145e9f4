"""Runs shipped inside the package: an ordinary run folder made by the project's own default `vqprior run` on
MNIST (manifests, JSON, safetensors, .npy and pictures: nothing pickled, nothing that names code), and the three
feature networks `vqprior eval` uses on MNIST.

    vqprior pretrained mnist          copies it to artifacts/mnist-pretrained (a named run like any other)
    vqprior serve --pretrained        serves it from the package, nothing copied
    vqprior.load("pretrained:mnist")  the Python API on it

`pack` makes the shipped folder from a finished, evaluated run (`make pretrained`): it keeps what every command
needs and drops what only training needs (the prior's last-weights copy, progress frames and GIFs, per-step logs),
rewriting those stages' manifests to list what is kept, and records how the run was made in PRETRAINED.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from ..run_folder import CONFIG, EVAL_JSON, EVAL_SHEET, MANIFEST, METRICS, WEIGHTS, RunFolder

HERE = Path(__file__).resolve().parent
NAMES = ("mnist",)
# files a stage's manifest may keep; the rest are training by-products
KEEP = {
    1: {CONFIG, METRICS, "reconstructions.png", WEIGHTS[1]},
    2: {"test_codes.npy", "test_labels.npy", "train_codes.npy", "train_labels.npy"},
    3: {CONFIG, METRICS, WEIGHTS[3]},
    4: {"rows.json", "samples.npz", "samples.png"},
}


def folder(name: str) -> Path:
    """The shipped run folder of this name (read it, never write into it)."""
    if name not in NAMES:
        raise UserError(f"no pretrained run called {name!r}; the package ships: {', '.join(NAMES)}")
    path = HERE / name
    if not RunFolder(path).finished(3):
        raise UserError(f"this installation has no pretrained {name} run ({path} is missing); reinstall vqprior")
    return path


def install(name: str, out_dir: Path, run_name: str | None = None, replace: bool = False) -> Path:
    """Copy the shipped run to <out_dir>/<run_name> (default "<name>-pretrained"); an existing folder is kept unless
    `replace` (or it already is an intact copy of this shipped run: every stage's manifest the same and every file
    checking out against it). The copy is made under the run lock, so no command is writing the folder meanwhile."""
    from ..artifacts import writing_folder

    source = folder(name)
    package = HERE.parent
    where = Path(out_dir).expanduser().resolve()
    if where == package or package in where.parents:
        raise UserError(
            f"--out-dir {out_dir} is inside the installed vqprior package, which is never written; choose another"
        )
    target = Path(out_dir) / (run_name or f"{name}-pretrained")
    if target.exists() and not replace:
        if is_copy_of(target, source):
            return target
        raise UserError(
            f"{target} exists and is not an intact copy of this pretrained run; pass --name NEW or --replace"
        )
    with RunFolder(target).lock(), writing_folder(target) as tmp:
        for item in sorted(source.iterdir()):
            if item.name.startswith(("_", ".")) or item.suffix == ".py":
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        for stage in (1, 2, 3, 4):
            RunFolder(tmp).read_stage(stage)  # every manifest checks out in its new place, before it is in place
    return target


def is_copy_of(target: Path, source: Path) -> bool:
    """`target` holds the shipped run unchanged: the same PRETRAINED.json and stage manifests, every listed file intact."""
    try:
        if (target / "PRETRAINED.json").read_bytes() != (source / "PRETRAINED.json").read_bytes():
            return False
        run = RunFolder(target)
        for stage in (1, 2, 3, 4):
            if run.manifest_file(stage).read_bytes() != RunFolder(source).manifest_file(stage).read_bytes():
                return False
            run.read_stage(stage)
    except (OSError, UserError):
        return False
    return True


def pack(run_dir: Path, dest: Path, record: dict) -> Path:
    """Write the shipped form of a finished, evaluated run to `dest` (replacing it). `record`: how it was made
    (command, seed, machine yardstick, ...), saved with its eval numbers in PRETRAINED.json."""
    from ..artifacts import load_json_object, save_json, writing_folder

    run = RunFolder(run_dir)
    for stage in (1, 2, 3, 4):
        run.read_stage(stage)
    ev = run.evaluation()
    if ev is None:
        raise UserError(f"{run.path} has no evaluation; run `vqprior eval` on it first")
    with writing_folder(Path(dest)) as tmp:
        for stage, keep in KEEP.items():
            src, out = run.stage(stage), tmp / run.stage(stage).name
            out.mkdir()
            manifest = load_json_object(src / MANIFEST)
            dropped = sorted(set(manifest["outputs"]) - keep)
            manifest["outputs"] = {k: v for k, v in manifest["outputs"].items() if k in keep}
            if dropped:
                manifest["packed"] = {"dropped": dropped, "why": "training by-products, not needed to use the run"}
            for name in manifest["outputs"]:
                shutil.copy2(src / name, out / name)
            save_json(out / MANIFEST, manifest)
        packed = RunFolder(tmp)
        packed.eval.mkdir()
        for name in (EVAL_JSON, EVAL_SHEET):
            shutil.copy2(run.eval / name, packed.eval / name)
        if run.eval_results.is_dir():
            shutil.copytree(run.eval_results, packed.eval_results)
        save_json(
            tmp / "PRETRAINED.json",
            {
                **record,
                "eval": {
                    "reference": ev["reference"],
                    "n_samples": ev["n_samples"],
                    "temperature": ev["temperature"],
                    "guidance": ev["guidance"],
                    "fd_ratio_worst_space": ev["samples"]["fd_ratio"],
                    "fd_ratio_by_space": ev["samples"]["fd_ratio_by_space"],
                    "conditional_accuracy": ev["samples"].get("conditional_accuracy"),
                    "test_bits_per_map": ev["prior"]["test_bits_per_map"],
                    "recon_fd_ratio": ev["vqvae"]["recon_fd_ratio"],
                },
            },
        )
    for stage in (1, 2, 3, 4):
        RunFolder(dest).read_stage(stage)
    return Path(dest)
