"""Resumable training loops: periodic atomic checkpoints, and Ctrl-C / SIGTERM stop after the current step.

A checkpoint holds everything the rest of the run depends on (model, optimizer, scheduler, RNG states of
torch/numpy/python, the data-order generator at the start of the epoch, the step within the epoch, the
epoch's running metrics), so a resumed run ends with the same weights as one that was never interrupted.
It is loaded with torch.load(weights_only=True): tensors and plain containers only, never arbitrary pickles.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .runtime import Reporter, batches


class Interrupted(UserError):
    """Stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    exit_code = 130


class StopRequest:
    """While active, the first SIGINT/SIGTERM only sets `requested`; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((3, tuple(state["python"][0]), state["python"][1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableLoop:
    """Epochs and shuffled batches that survive interruption.

        loop = ResumableLoop(...)
        for epoch in loop.epochs():
            acc = loop.accumulators({"loss": 0.0})
            for idx in loop.batches("stage 1 epoch"):
                ...one optimisation step...
            loop.end_epoch({...metrics...})
        loop.finish()
    """

    def __init__(self, stage: int, run_dir: Path, fingerprint: dict, stateful: dict[str, Any], n_items: int, batch_size: int,
                 epochs: int, seed: int, checkpoint_every: int, resume: str, reporter: Reporter, lr_key: str = "the learning rate"):
        self.stage, self.fingerprint, self.stateful = stage, json.loads(json.dumps(fingerprint)), stateful
        self.n_items, self.batch_size, self.n_epochs = n_items, batch_size, epochs
        self.checkpoint_every, self.reporter, self.lr_key = checkpoint_every, reporter, lr_key
        self.path = Path(run_dir) / ".checkpoints" / f"stage{stage}.pt"
        self.order = torch.Generator().manual_seed(seed)
        self.epoch, self.step, self.history, self._acc, self._saved_acc = 1, 0, [], None, None
        self._epoch_order_state = self.order.get_state()
        self._stop: StopRequest | None = None
        if resume == "restart":
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            self._load()
        elif resume == "require":
            raise UserError(f"--resume: no checkpoint for stage {stage} at {self.path}; run the stage without --resume")

    # ---------------------------------------------------------------- checkpoint I/O
    def _load(self) -> None:
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"checkpoint {self.path} is unreadable ({type(e).__name__}); delete it or pass --restart") from None
        if ckpt.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint {self.path} was made with a different config; pass --restart to discard it "
                            f"or run with the config it was made with")
        for name, obj in self.stateful.items():
            obj.load_state_dict(ckpt["state"][name])
        self.epoch, self.step, self.history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        self._saved_acc = ckpt["accumulators"]
        self._epoch_order_state = ckpt["epoch_order_state"]
        self.order.set_state(self._epoch_order_state)
        _set_rng_state(ckpt["rng"])
        self.reporter.log(f"stage {self.stage}: resuming from epoch {self.epoch} step {self.step} ({self.path}); --restart starts over")

    def _check_finite(self) -> None:
        """Losses are summed on the device (no per-step sync); a NaN/inf anywhere makes the sum non-finite,
        and it is caught here, before a checkpoint could store the broken state."""
        for name, value in (self._acc or {}).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise UserError(f"stage {self.stage} epoch {self.epoch}: the loss became {value.item()} by step {self.step}; stopped, "
                                f"the last good checkpoint is kept; lower {self.lr_key} and run the stage again with --restart")

    def save(self) -> None:
        self._check_finite()
        payload = {"fingerprint": self.fingerprint, "epoch": self.epoch, "step": self.step, "history": self.history,
                   "accumulators": self._acc, "epoch_order_state": self._epoch_order_state, "rng": _rng_state(),
                   "state": {name: obj.state_dict() for name, obj in self.stateful.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write checkpoint {self.path}: {e.strerror}; free disk space or choose another run.out_dir") from None

    # ---------------------------------------------------------------- iteration
    def epochs(self) -> Iterator[int]:
        with StopRequest() as self._stop:
            while self.epoch <= self.n_epochs:
                yield self.epoch
                self.epoch += 1
                self.step, self._acc = 0, None

    def accumulators(self, fresh: dict) -> dict:
        """The epoch's running sums: `fresh` at the start of an epoch, the saved ones (moved to the devices of
        `fresh`) when resuming mid-epoch."""
        if self._acc is None:
            saved, self._saved_acc = self._saved_acc, None
            self._acc = fresh if saved is None else {
                k: saved[k].to(v.device) if isinstance(v, torch.Tensor) else saved[k] for k, v in fresh.items()}
        return self._acc

    def batches(self, description: str) -> Iterator[torch.Tensor]:
        if self.step == 0:
            self._epoch_order_state = self.order.get_state()
        else:  # resuming mid-epoch: replay this epoch's order from its saved start
            self.order.set_state(self._epoch_order_state)
        order = batches(self.n_items, self.batch_size, self.order)
        remaining = order[self.step :]
        for idx in self.reporter.track(remaining, len(remaining), f"{description} {self.epoch}"):
            yield idx
            self.step += 1
            if self._stop is not None and self._stop.requested:
                self.save()
                raise Interrupted(f"stage {self.stage} stopped at epoch {self.epoch} step {self.step}; checkpoint saved, "
                                  f"run the same command again to resume (or with --restart to start over)")
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save()
        self._check_finite()

    def end_epoch(self, row: dict) -> None:
        self.history.append(row)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass
