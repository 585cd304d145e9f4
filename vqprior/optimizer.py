"""What the training loop steps besides the model: the learning rate (its batch-size scaling and schedule) and the
exponential moving average of the weights that stage 3 evaluates and saves."""

from __future__ import annotations

import math

import torch

REFERENCE_BATCH = 128  # learning rates and warm-ups in the config are given for this batch size


def scaled_lr(lr: float, batch_size: int) -> float:
    """Adam's learning rate for `batch_size` from the rate at REFERENCE_BATCH (square-root scaling)."""
    return lr * math.sqrt(batch_size / REFERENCE_BATCH)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero: the most out of a short, fixed training budget."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightEMA(torch.nn.Module):
    """An exponential moving average of a model's floating-point parameters and buffers, with Adam's bias
    correction: update t moves the average by (1 - decay) / (1 - decay^t) of the way to the current weights, so the
    first update copies them and a short run (the quick preset's 900 steps at decay 0.99) does not keep its first,
    untrained weights. For long runs it is the plain EMA. The step count and the weight live on the device and the
    update is one fused multi-tensor lerp with no branch on a tensor value: no host sync. Integer buffers are copied.
    `module` is the averaged copy (what is evaluated, sampled from and saved); its state dict is AveragedModel's
    ("module.*", "n_averaged"), so checkpoints of either load."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        import copy

        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay = decay
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long, device=next(model.parameters()).device))

    def _pairs(self, model: torch.nn.Module) -> tuple[list, list, list, list]:
        avg = [*self.module.parameters(), *self.module.buffers()]
        cur = [*model.parameters(), *model.buffers()]
        floats = [i for i, t in enumerate(avg) if t.is_floating_point()]
        others = [i for i, t in enumerate(avg) if not t.is_floating_point()]
        return (
            [avg[i] for i in floats],
            [cur[i].detach() for i in floats],
            [avg[i] for i in others],
            [cur[i] for i in others],
        )

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if getattr(self, "_groups_of", None) != id(model):  # the tensor lists are grouped once, not every step
            avg_f, cur_f, self._avg_other, self._cur_other = self._pairs(model)
            self._groups = {
                d: ([a for a in avg_f if a.dtype == d], [c for a, c in zip(avg_f, cur_f) if a.dtype == d])
                for d in {t.dtype for t in avg_f}
            }
            self._groups_of = id(model)  # an id, not the module: a module attribute would join the state dict
        self.n_averaged.add_(1)
        weight = (1 - self.decay) / (1 - torch.pow(self.decay, self.n_averaged.to(torch.float64)))
        for dtype, (averaged, current) in self._groups.items():  # one fused lerp per dtype, the weight on the device
            torch._foreach_lerp_(averaged, current, weight.to(dtype))
        if self._avg_other:
            torch._foreach_copy_(self._avg_other, self._cur_other)
