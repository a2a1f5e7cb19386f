"""Scheduler: singletons' checkpoints on disk, under ``foundation.processes.checkpoint-dir``.

With that setting, the supervisor writes each singleton's latest checkpoint to a file
of the directory (one file per name, replaced atomically) and reads it back when a
singleton of that name starts, so state outlives a restart of the whole cluster.
Stopping a singleton removes its file. Without the setting nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os

from foundation_dask import config

logger = logging.getLogger(__name__)


def checkpoint_path(name_key: str) -> str | None:
    """File of a singleton's checkpoint under ``foundation.processes.checkpoint-dir``
    (the directory is created), or ``None`` when that setting is empty."""
    directory = config.get("processes.checkpoint-dir")
    if not directory:
        return None
    directory = os.path.expanduser(str(directory))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, hashlib.sha1(name_key.encode()).hexdigest() + ".ckpt")


def persist(name_key: str, state: bytes | None) -> None:
    """Write (or with ``None`` remove) a singleton's checkpoint file, atomically.

    A failed write is logged, not raised: the checkpoint in the supervisor's memory
    still holds.
    """
    path = checkpoint_path(name_key)
    if path is None:
        return
    try:
        if state is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(state)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("Could not write the checkpoint of %s to %s: %s", name_key, path, exc)


def persisted(name_key: str) -> bytes | None:
    """The checkpoint file's content of a singleton, or ``None`` when there is none."""
    path = checkpoint_path(name_key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
