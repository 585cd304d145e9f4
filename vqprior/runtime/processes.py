"""This process's place among torchrun's processes, and the one line for a peer that was lost."""

from __future__ import annotations

import os

from ..errors import UserError


def first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def lost_peer(e: BaseException, rank: int) -> UserError | None:
    """The one line for a collective that failed because another torchrun process died or hung (None when `e` is
    something else): every surviving process stops with it instead of a traceback or a hang."""
    import torch.distributed as dist

    text = str(e)
    if isinstance(e, dist.DistError) or any(
        s in text
        for s in (
            "Gloo",
            "gloo",
            "NCCL",
            "Connection closed",
            "Connection reset",
            "Broken pipe",
            "Timed out",
            "timed out",
        )
    ):
        return UserError(
            f"[rank {rank}] lost contact with another torchrun process ({first_line(e)}); every process stops. "
            f"Run the same command again to resume from the last checkpoint"
        )
    return None


def process_place() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables; malformed ones are one line."""
    values = []
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)):
        raw = os.environ.get(key)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            value = -1
        if value < (1 if key.endswith("WORLD_SIZE") else 0) or value > 1 << 20:
            raise UserError(
                f"the environment variable {key}={raw!r} is not a valid torchrun setting; unset it, or start "
                f"the command with torchrun"
            )
        values.append(value)
    rank, world, local, local_world = values
    if rank >= world or local >= local_world:
        raise UserError(
            f"RANK={rank}/LOCAL_RANK={local} do not fit WORLD_SIZE={world}/LOCAL_WORLD_SIZE={local_world}; "
            f"unset them, or start the command with torchrun"
        )
    return rank, world, local, local_world
