"""THE training loop of stages 1 and 3: steps, metric sums, checkpoints, resume, stop requests, NaN checks.

A checkpoint holds everything the rest of the run depends on (model, optimizer, scheduler, RNG states of
torch/numpy/python, the data-order generator at the start of the epoch, the step within the epoch, the
epoch's running metrics), so a resumed run ends with the same weights as one that was never interrupted.
It is loaded with torch.load(weights_only=True): tensors and plain containers only, never arbitrary pickles.
"""

from __future__ import annotations

import io
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import read_regular, write_bytes_atomic
from .errors import UserError
from .optimizer import cosine_schedule
from .reporter import Reporter
from .runtime import Runtime, batches


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
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate((3, tuple(state["python"][0]), state["python"][1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


EpochCallback = Callable[[int, dict], None]
STOP_CHECK_EVERY = 20  # under torchrun, steps between the collective that shares a Ctrl-C/SIGTERM with every process


class Trainer:
    """Epochs of shuffled batches that survive interruption.

        trainer = Trainer(...)
        history = trainer.fit(step, on_epoch_end=[evaluate, log])

    `step(idx)` gets the global batch of item indices on the training device (the same whatever the number of
    processes), takes this process's part with `trainer.shard`, computes its loss through `trainer.module` (the
    model, wrapped in DistributedDataParallel under torchrun) and returns {"loss": loss, ...}; it runs under the
    runtime's autocast. Every value is summed over the epoch on the device; `loss` is also back-propagated.
    Nothing in a step waits for the device: the host reads values back only at checkpoints (every
    `checkpoint_every` steps), at epoch ends, and, under torchrun, to share a stop request every STOP_CHECK_EVERY steps.
    After each epoch, `row` = {"epoch", "train_<name>": mean per batch} goes through the epoch callbacks,
    which add to it (evaluation, pictures, logging); the epoch's raw sums are in `trainer.sums`.
    A stop request (Ctrl-C, SIGTERM) is honoured after the current step or, if it comes during the epoch-end
    callbacks, right after them: a checkpoint is saved and `Interrupted` raised.
    """

    def __init__(
        self,
        *,
        stage: int,
        runtime: Runtime,
        checkpoint: Path,
        fingerprint: dict,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_items: int,
        batch_size: int,
        epochs: int,
        checkpoint_every: int,
        resume: str,
        reporter: Reporter,
        lr_key: str,
        warmup_examples: int = 0,
        extra_state: dict[str, Any] | None = None,
    ):
        self.stage, self.runtime, self.model, self.optimizer = stage, runtime, model, optimizer
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.n_items, self.batch_size, self.n_epochs = n_items, batch_size, epochs
        self.checkpoint_every, self.reporter, self.lr_key = checkpoint_every, reporter, lr_key
        self.steps_per_epoch = -(-n_items // batch_size)
        if batch_size % runtime.world_size:
            raise UserError(
                f"the batch size {batch_size} does not divide among {runtime.world_size} processes; "
                f"choose a multiple of {runtime.world_size} ({lr_key.split('.')[0]}.batch_size)"
            )
        # under torchrun: gradients are averaged across processes; the model's own methods stay reachable as self.model
        self.module = runtime.wrap(model)
        warmup_steps = -(-warmup_examples // batch_size)  # the same number of examples whatever the batch size
        self.scheduler = cosine_schedule(
            optimizer, epochs * self.steps_per_epoch, min(warmup_steps, self.steps_per_epoch)
        )
        self.stateful = {"model": model, "optimizer": optimizer, "scheduler": self.scheduler, **(extra_state or {})}
        self.path = Path(checkpoint)  # the run folder's resume state for this stage
        self.order = torch.Generator().manual_seed(runtime.seed)
        self.epoch, self.step, self.history = 1, 0, []
        self.sums: dict[str, torch.Tensor] = {}
        self.n_batches = 0
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
            ckpt = torch.load(io.BytesIO(read_regular(self.path)), map_location="cpu", weights_only=True)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"checkpoint {self.path} is unreadable ({type(e).__name__}); delete it or pass --restart"
            ) from None
        if not isinstance(ckpt, dict):
            raise UserError(
                f"checkpoint {self.path} is not a vqprior checkpoint (a {type(ckpt).__name__}); delete it or pass --restart"
            )
        if ckpt.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"checkpoint {self.path} was made with a different config; pass --restart to discard it "
                f"or run with the config it was made with"
            )
        try:
            for name, obj in self.stateful.items():
                obj.load_state_dict(ckpt["state"][name])
            self.epoch, self.step, self.history, self.n_batches = (
                ckpt["epoch"],
                ckpt["step"],
                ckpt["history"],
                ckpt["n_batches"],
            )
            counters = (self.epoch, self.step, self.n_batches)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters):
                raise ValueError(f"epoch, step and n_batches must be counts, got {list(counters)}")
            if not (1 <= self.epoch <= self.n_epochs + 1 and isinstance(self.history, list)):
                raise ValueError(f"epoch {self.epoch} is outside this stage's 1..{self.n_epochs + 1}")
            self.sums = {k: v.to(self.runtime.device) for k, v in ckpt["sums"].items()}
            self._epoch_order_state = ckpt["epoch_order_state"]
            self.order.set_state(self._epoch_order_state)
            _set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise UserError(
                f"checkpoint {self.path} is not a vqprior checkpoint of this stage ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:100] if str(e) else e!r}); delete it or pass --restart"
            ) from None
        self.reporter.log(
            f"stage {self.stage}: resuming from epoch {self.epoch} step {self.step} ({self.path}); --restart starts over"
        )

    def _check_finite(self) -> None:
        """Losses are summed on the device (no per-step sync); a NaN/inf anywhere makes the sum non-finite,
        and it is caught here, before a checkpoint could store the broken state."""
        loss = self.sums.get("loss")
        if loss is not None and not math.isfinite(loss.item()):
            raise UserError(
                f"stage {self.stage} epoch {self.epoch}: the loss became {loss.item()} by step {self.step}; stopped, "
                f"the last good checkpoint is kept; lower {self.lr_key} and run the stage again with --restart"
            )

    def save(self) -> None:
        self._check_finite()
        if not self.runtime.is_main:
            return
        payload = {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "n_batches": self.n_batches,
            "epoch_order_state": self._epoch_order_state,
            "rng": _rng_state(),
            "state": {name: obj.state_dict() for name, obj in self.stateful.items()},
        }
        buffer = io.BytesIO()  # serialised first, so a full disk fails in one plain write and the last checkpoint stays
        torch.save(payload, buffer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, buffer.getvalue())

    def _stop_if_requested(self, every_step: bool = False) -> None:
        requested = self._stop is not None and self._stop.requested
        if self.runtime.distributed:  # a signal to any process stops them all, at the same step
            if every_step and self.step % STOP_CHECK_EVERY:
                return  # the collective below waits for the device: only every STOP_CHECK_EVERY steps
            flag = self.runtime.max_(torch.tensor([float(requested)], device=self.runtime.device))
            requested = bool(flag.item())
        if requested:
            self.save()
            raise Interrupted(
                f"stage {self.stage} stopped at epoch {self.epoch} step {self.step}; checkpoint saved, "
                f"run the same command again to resume (or with --restart to start over)"
            )

    # ---------------------------------------------------------------- the loop
    def fit(
        self,
        step: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        on_epoch_end: list[EpochCallback] = (),
        after_step: list[Callable[[], None]] = (),
    ) -> list[dict]:
        """Train to the last epoch; `after_step` callbacks run after every optimizer step (e.g. a weight EMA)."""
        self._trained_this_call = self.epoch <= self.n_epochs
        with StopRequest() as self._stop:
            while self.epoch <= self.n_epochs:
                t0 = time.perf_counter()
                self._run_epoch(step, after_step)
                self._reduce_sums()
                self._check_finite()
                per_batch = max(1, self.n_batches * self.runtime.world_size)
                row = {
                    "epoch": self.epoch,
                    **{f"train_{k}": v.item() / per_batch for k, v in self.sums.items() if v.dim() == 0},
                    "train_seconds": time.perf_counter() - t0,
                }
                for callback in on_epoch_end:
                    callback(self.epoch, row)
                row["seconds"] = time.perf_counter() - t0
                self.history.append(row)
                self.epoch += 1
                self.step, self.sums, self.n_batches = 0, {}, 0
                self._epoch_order_state = self.order.get_state()  # where the next epoch's shuffle starts
                self._stop_if_requested()  # a request that came during evaluation is not dropped
            if self.checkpoint_every and self._trained_this_call:
                # the finished training is kept until the stage's outputs are written (`finish`): a full disk or a
                # crash while writing them costs a re-run of the writing, not of the training
                self.save()
        self._check_replicas_agree()
        return self.history

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous part of a global batch (all of it with one process)."""
        return self.runtime.shard(batch)

    def _reduce_sums(self) -> None:
        """Each process summed its own shard; the epoch's metrics are over all of them."""
        for v in self.sums.values():
            self.runtime.sum_(v)

    def _check_replicas_agree(self) -> None:
        """Under torchrun every process must end with the same weights; checked, not assumed."""
        if not self.runtime.distributed:
            return
        flat = torch.cat(
            [t.detach().flatten().double() for t in self.model.state_dict().values() if t.is_floating_point()]
        )
        reference = self.runtime.broadcast_(flat.clone())
        differs = self.runtime.max_(torch.tensor([float(not torch.equal(flat, reference))], device=flat.device))
        if differs.item():
            raise RuntimeError(f"stage {self.stage}: the processes ended with different weights")

    def _run_epoch(self, step: Callable[[torch.Tensor], dict[str, torch.Tensor]], after_step) -> None:
        if self.step == 0:
            self._epoch_order_state = self.order.get_state()
        else:  # resuming mid-epoch: replay this epoch's order from its saved start
            self.order.set_state(self._epoch_order_state)
        order = batches(self.n_items, self.batch_size, self.order, self.runtime.device)
        remaining = order[self.step :]
        self.model.train()
        for idx in self.reporter.track(remaining, len(remaining), f"stage {self.stage} epoch {self.epoch}"):
            with self.runtime.autocast():
                out = step(idx)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            self.optimizer.step()
            self.scheduler.step()
            for callback in after_step:
                callback()
            for k, v in out.items():
                v = v.detach()
                v = v.double() if v.is_floating_point() else v
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.n_batches += 1
            self.step += 1
            self._stop_if_requested(every_step=True)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save()

    def finish(self) -> None:
        """The stage's outputs are written: the checkpoint is no longer needed."""
        if not self.runtime.is_main:
            return
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass
