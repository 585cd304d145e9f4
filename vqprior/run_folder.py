"""The run folder: its layout, its lock, its manifests and the verified reads of what the stages saved.

    <run>/stage1 .. stage4/     one folder per stage: its outputs, config.json (stages 1 and 3), metrics.json and
                                manifest.json (sha256 of every output and of every input from an earlier stage)
    <run>/.checkpoints/         resume state of an interrupted training stage (stage1.pt, stage3.pt)
    <run>/progress/stage<N>/    a running stage's per-epoch lines and pictures
    <run>/eval/                 the latest evaluation (eval.json, samples.png) and results/<setting>.json
    <run>/complete/, score/     what `vqprior complete` and `vqprior score` wrote last
    <run>/generated/            what `vqprior generate` wrote without --out (numbered, never replaced)
    <run>/report.html, .lock

`RunFolder` is the one place that knows these names (tests/test_run_folder.py greps the library, the stages and
bench/ for any of them typed out elsewhere); code that writes a stage or an evaluation into a temporary folder
names its files with the constants below. A stage writes into a hidden temporary folder that is
renamed into place when everything is written, so a crash never leaves a half-written stage under its final
name; later stages check its manifest before they read it. Saved settings (the data section, the sampling
defaults, a stage's constructor arguments) are read from bytes whose sha256 matched the manifest, once per
object, and checked like values a user passes. The confinement rules (no links, no special files, nothing outside
the folder) are `artifacts.py`'s and apply to every read and write here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from . import guidance as guidance_values
from .artifacts import (
    MAX_JSON_BYTES,
    check_run_folder,
    inside,
    load_json_object,
    parse_json_object,
    read_regular,
    save_json,
    sha256_file,
    versions,
    writing_folder,
)
from .errors import UserError
from .run_lock import run_lock

STAGE_NAMES = {1: "VQ-VAE", 2: "code maps", 3: "prior", 4: "samples"}
MANIFEST = "manifest.json"  # every finished stage's: sha256 of its outputs and inputs, its fingerprint, its timings
CONFIG = "config.json"  # stages 1 and 3: the resolved config and the model's saved constructor
METRICS = "metrics.json"  # stages 1 and 3: the per-epoch history
WEIGHTS = {1: "vqvae.safetensors", 3: "prior.safetensors"}
EVAL_JSON, EVAL_SHEET, RESULTS = "eval.json", "samples.png", "results"  # inside <run>/eval/
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a stage's output: a file name, no folder, no '..'


class RunFolder:
    """One run folder (it need not exist yet): where each thing lives, and the checked reads of its stages."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._saved: dict[tuple[int, str], dict] = {}  # verified JSON files of finished stages, by (stage, name)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ layout
    def stage(self, stage: int) -> Path:
        return self.path / f"stage{stage}"

    def manifest_file(self, stage: int) -> Path:
        return self.stage(stage) / MANIFEST

    def config_file(self, stage: int) -> Path:
        return self.stage(stage) / CONFIG

    def metrics_file(self, stage: int) -> Path:
        return self.stage(stage) / METRICS

    def weights(self, stage: int) -> Path:
        """The trained model's weights (stage 1: the VQ-VAE, stage 3: the prior)."""
        return self.stage(stage) / WEIGHTS[stage]

    def checkpoint(self, stage: int) -> Path:
        return self.path / ".checkpoints" / f"stage{stage}.pt"

    def checkpoints(self) -> list[Path]:
        return sorted((self.path / ".checkpoints").glob("stage*.pt"))

    def progress(self, stage: int) -> Path:
        return self.path / "progress" / f"stage{stage}"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def eval_json(self) -> Path:
        """The headline evaluation."""
        return self.eval / EVAL_JSON

    @property
    def eval_sheet(self) -> Path:
        return self.eval / EVAL_SHEET

    @property
    def eval_results(self) -> Path:
        """One evaluation per setting (n, temperature, guidance, reference, seed)."""
        return self.eval / RESULTS

    @property
    def completions(self) -> Path:
        return self.path / "complete"

    @property
    def scores(self) -> Path:
        return self.path / "score"

    @property
    def generated(self) -> Path:
        return self.path / "generated"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def finished(self, stage: int) -> bool:
        """The stage has a manifest (it finished); read_stage says whether its files still check out."""
        return self.manifest_file(stage).is_file()

    # ------------------------------------------------------------------ writing
    def check(self) -> None:
        """Refuse a link or special file anywhere inside (see artifacts.check_run_folder)."""
        check_run_folder(self.path)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Only one process writes the folder at a time; what dead writers left is removed (run_lock.py)."""
        return run_lock(self.path, (self.checkpoint(1).parent, self.eval))

    @contextlib.contextmanager
    def writing_stage(self, stage: int) -> Iterator[Path]:
        """Yield a fresh temporary folder; on success it replaces stage<N>, on any error it is removed."""
        with writing_folder(self.stage(stage)) as tmp:
            yield tmp
        self._saved = {k: v for k, v in self._saved.items() if k[0] < stage}

    def write_manifest(
        self,
        folder: Path,
        stage: int,
        inputs: dict[str, Path],
        config: dict,
        timings: dict[str, float],
        fingerprint: dict,
        extra: dict | None = None,
    ) -> dict:
        """Fingerprint every file in `folder` (a stage being written) and every input; inputs are named files of
        earlier stages, recorded relative to the run folder (so it can be moved) and re-checked by every later
        reader. `fingerprint` is what the stage's outputs depend on: `vqprior run` skips it while it is unchanged."""
        manifest = {
            "stage": stage,
            "what": STAGE_NAMES[stage],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fingerprint": fingerprint,
            "inputs": {
                name: {"path": self._relative(Path(p)), "sha256": sha256_file(Path(p))} for name, p in inputs.items()
            },
            "outputs": {
                p.name: sha256_file(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST
            },
            "config": config,
            "versions": versions(),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            **(extra or {}),
        }
        save_json(Path(folder) / MANIFEST, manifest)
        return manifest

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(path.resolve())

    # ------------------------------------------------------------------ verified reads
    def read_stage(self, stage: int, needed_by: int | None = None) -> tuple[Path, dict]:
        """(folder, manifest) of a finished stage after checking that its files are unchanged and that the earlier
        stages' files it was made from are still the current ones (each file hashed once per process)."""
        folder = self.stage(stage)
        self.check()
        if not self.finished(stage):
            who = f"stage {needed_by} needs" if needed_by else "missing"
            raise UserError(
                f"{who} stage {stage} ({STAGE_NAMES[stage]}) output in {folder}, which does not exist; "
                f"run `vqprior run-stage {stage}` first"
            )
        manifest = load_json_object(folder / MANIFEST)
        outputs, inputs = manifest.get("outputs", {}), manifest.get("inputs", {})
        if (
            not isinstance(outputs, dict)
            or not isinstance(inputs, dict)
            or not all(
                isinstance(v, dict) and isinstance(v.get("path"), str) and isinstance(v.get("sha256"), str)
                for v in inputs.values()
            )
        ):
            raise UserError(
                f"{folder / MANIFEST} is not a stage manifest (outputs/inputs of the wrong shape); re-run stage {stage}"
            )
        for name, digest in outputs.items():
            if not PLAIN_NAME.match(name) or name == MANIFEST or not isinstance(digest, str):
                raise UserError(
                    f"{folder / MANIFEST} lists {name!r} as an output, which is not a file of that stage folder; "
                    f"re-run stage {stage}"
                )
            path = folder / name
            if not path.is_file():
                raise UserError(f"{path} is missing though stage {stage}'s manifest lists it; re-run stage {stage}")
            if sha256_file(path) != digest:
                raise UserError(
                    f"{path} changed after stage {stage} wrote it (sha256 differs from its manifest); re-run stage {stage}"
                )
        for record in inputs.values():
            source = inside(self.path, record["path"])
            if not source.is_file() or sha256_file(source) != record["sha256"]:
                made_by = re.match(r"stage(\d)/", record["path"])
                first = int(made_by.group(1)) + 1 if made_by else stage
                redo = (
                    f"stage {stage}"
                    if first >= stage
                    else f"stages {', '.join(map(str, range(first, stage)))} and {stage}"
                )
                raise UserError(
                    f"stage {stage} in {folder} was made from a {source} that has since been replaced or removed "
                    f"(an earlier stage was re-run); re-run {redo}"
                )
        return folder, manifest

    def is_current(self, stage: int, fingerprint: dict | None) -> bool:
        """True when the stage's outputs are intact, made from the current earlier stages, with this fingerprint."""
        if fingerprint is None or not self.finished(stage):
            return False
        try:
            _, manifest = self.read_stage(stage)
        except UserError:
            return False
        return manifest.get("fingerprint") == json.loads(json.dumps(fingerprint))

    def manifest(self, stage: int) -> dict | None:
        """A finished stage's manifest as it is (not verified: for listing and comparing), {} when unreadable,
        None when the stage has not finished."""
        if not self.finished(stage):
            return None
        try:
            return load_json_object(self.manifest_file(stage))
        except (UserError, OSError):
            return {}

    def output_sha(self, stage: int, name: str) -> str | None:
        """The sha256 a finished stage recorded for one of its outputs (not re-hashed), or None."""
        digest = (self.manifest(stage) or {}).get("outputs", {})
        digest = digest.get(name) if isinstance(digest, dict) else None
        return digest if isinstance(digest, str) else None

    def saved(self, stage: int, name: str = CONFIG) -> dict:
        """A JSON object a finished stage saved (its config.json by default), from bytes whose sha256 is the one in
        its verified manifest; read once per RunFolder."""
        key = (stage, name)
        if key not in self._saved:
            folder, manifest = self.read_stage(stage)
            path = folder / name
            data = read_regular(path, MAX_JSON_BYTES)
            if hashlib.sha256(data).hexdigest() != manifest["outputs"].get(name):
                raise UserError(f"{path} is not the file stage {stage}'s manifest lists; re-run stage {stage}")
            self._saved[key] = parse_json_object(data, path)
        return self._saved[key]

    # ------------------------------------------------------------------ typed accessors
    def component(self, stage: int, key: str) -> dict:
        """A saved {target, params} section of a stage's config.json (stage 1: 'vqvae', stage 3: 'prior')."""
        section = self.saved(stage).get(key)
        if not (
            isinstance(section, dict)
            and isinstance(section.get("target"), str)
            and isinstance(section.get("params", {}), dict)
        ):
            raise UserError(f"{self.config_file(stage)} has no valid {key!r} {{target, params}}; re-run stage {stage}")
        return section

    def data(self):
        """Stage 1's data section (what stage 2, eval, the page and `--from test` read), as a DataSection."""
        from pydantic import ValidationError

        from .config import DataSection
        from .config_checks import format_validation_error

        try:
            return DataSection.model_validate(self.saved(1).get("data"))
        except ValidationError as e:
            raise UserError(
                f"{self.config_file(1)} has a data section that is not valid "
                f"({format_validation_error(e)}); re-run stage 1"
            ) from None

    def class_names(self) -> list[str] | None:
        """The class names stage 1 read from the data (None for an unlabelled dataset)."""
        names = self.saved(1).get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
            raise UserError(f"{self.config_file(1)}: class_names must be a list of names; re-run stage 1")
        return names

    def sampling(self) -> tuple[float, float | tuple[float, float]]:
        """(temperature, guidance) saved with the prior: the defaults of generate, complete, eval and the page.
        Checked like values a user passes (a forged 1e6 guidance is refused, not used)."""
        from .config_checks import check_sampling

        where = self.config_file(3)
        config = self.saved(3).get("config", {})
        sample_cfg = config.get("sample", {}) if isinstance(config, dict) else None
        if not isinstance(sample_cfg, dict):
            raise UserError(f"{where}: config.sample is not a table; re-run stage 3")
        temperature, guidance = sample_cfg.get("temperature", 1.0), sample_cfg.get("guidance", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise UserError(f"{where}: sample.temperature must be a number, got {temperature!r}; re-run stage 3")
        try:
            check_sampling(temperature, guidance)
        except UserError as e:
            raise UserError(f"{where} holds saved sampling settings out of range ({e}); re-run stage 3") from None
        return float(temperature), guidance_values.check(guidance)

    def evaluation(self) -> dict | None:
        """The latest evaluation (eval/eval.json), or None when the run was not evaluated."""
        return load_json_object(self.eval_json) if os.path.lexists(self.eval_json) else None

    def evaluations(self, eval_dir: Path | None = None) -> dict[str, dict]:
        """The kept evaluations, one per setting (file name -> result); unreadable ones are left out. `eval_dir`: an
        evaluation folder not yet in place (`vqprior eval` renders the report before it replaces the old one)."""
        kept = {}
        folder = self.eval_results if eval_dir is None else Path(eval_dir) / RESULTS
        if folder.is_dir() and not folder.is_symlink():
            for path in sorted(folder.glob("*.json")):
                try:
                    kept[path.name] = load_json_object(path)
                except (UserError, OSError):
                    continue
        return kept


def as_run_folder(run: RunFolder | str | Path) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)
