"""Live training output of a stage: one JSON line per epoch (flushed, so `tail -f` works) and one picture
per epoch, in `<run>/progress/stage<N>/` while the stage runs; moved into the stage folder (with an
animated GIF of the pictures) when it finishes. A resumed stage keeps the lines and pictures of the
epochs before its checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from ..artifacts import write_bytes_atomic


class ProgressWriter:
    def __init__(self, run_folder, stage: int, first_epoch: int, enabled: bool = True, tensorboard: bool = False):
        self.folder = run_folder.progress(stage)
        self.enabled, self.stage = enabled, stage
        self.tb = None
        if not enabled:
            return
        lines = self.folder / "metrics.jsonl"
        if lines.is_file():  # epochs from the resume point on are redone: drop what a crashed run wrote for them
            kept = [line for line in lines.read_text(errors="replace").splitlines() if _epoch(line) < first_epoch]
            write_bytes_atomic(lines, "".join(line + "\n" for line in kept).encode())
        for frame in self.folder.glob("epoch_*.png"):
            if int(frame.stem.split("_")[1]) >= first_epoch:
                frame.unlink()
        if tensorboard:
            self.tb = _tensorboard_writer(run_folder.tensorboard)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"stage{self.stage}/{key}", value, row["epoch"])
            self.tb.flush()

    def picture(self, epoch: int, images: torch.Tensor, nrow: int) -> None:
        """images: float [N, C, H, W] in [0, 1]."""
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_image(images, self.folder / f"epoch_{epoch:03d}.png", nrow=nrow, padding=2, pad_value=0.5)

    def finish(self, out: Path, gif_name: str) -> None:
        """Copy the lines and pictures into the stage's (temporary) output folder and make the GIF."""
        if not self.enabled or not self.folder.is_dir():
            return
        shutil.copy(self.folder / "metrics.jsonl", out / "metrics.jsonl")
        frames = sorted(self.folder.glob("epoch_*.png"))
        if frames:
            (out / "epochs").mkdir()
            for f in frames:
                shutil.copy(f, out / "epochs" / f.name)
            write_gif([labelled(Image.open(f), f"epoch {int(f.stem.split('_')[1])}") for f in frames], out / gif_name)

    def cleanup(self) -> None:
        if self.enabled:
            shutil.rmtree(self.folder, ignore_errors=True)
            try:
                self.folder.parent.rmdir()
            except OSError:
                pass
        if self.tb is not None:
            self.tb.close()


def _epoch(line: str) -> float:
    """The epoch of one progress line; a line cut short by a crash (or not one of ours) counts as never written."""
    try:
        row = json.loads(line)
    except ValueError:
        return float("inf")
    epoch = row.get("epoch") if isinstance(row, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else float("inf")


def labelled(frame: Image.Image, text: str) -> Image.Image:
    """The frame under a strip that names it (a GIF's frames say which epoch they show)."""
    from PIL import ImageDraw

    frame = frame.convert("RGB")
    out = Image.new("RGB", (frame.width, frame.height + 14), (255, 255, 255))
    out.paste(frame, (0, 14))
    ImageDraw.Draw(out).text((3, 1), text, fill=(0, 0, 0))
    return out


def write_gif(frames: list[Image.Image], path: Path, ms_per_frame: int = 600) -> None:
    """An animated GIF that loops, holding the last frame a little longer."""
    frames = [f.convert("RGB").convert("P", palette=Image.ADAPTIVE) for f in frames]
    durations = [ms_per_frame] * (len(frames) - 1) + [ms_per_frame * 3]
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False, disposal=1
    )


def _tensorboard_writer(folder: Path):
    from ..errors import UserError

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "run.tensorboard=true needs the tensorboard package: pip install 'vqprior[tensorboard]'"
        ) from None
    return SummaryWriter(str(folder))
