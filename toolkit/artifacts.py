"""Writing artifacts without losing anything: temporary file + rename, and no silent overwrite."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PrtkInputError


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse to replace an existing artifact unless ``force``; returns ``path`` as a Path."""
    path = Path(path)
    if path.exists() and not force:
        raise PrtkInputError(f"output exists: {path} (pass --force to overwrite)")
    if path.is_dir():
        raise PrtkInputError(f"output is a directory: {path}")
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_torch_atomic(path: str | Path, state: dict) -> None:
    """``torch.save`` a state dict (tensors, numbers, strings: loadable with ``weights_only=True``) atomically."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def write_json_atomic(path: str | Path, document: dict) -> None:
    write_bytes_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def output_lock(out: str | Path):
    """Hold an exclusive lock on ``.<out>.lock`` beside ``out`` while a run writes it; a second process
    writing the same output (e.g. two ``--shard`` runs given one ``--out``) is refused in one line."""
    import fcntl

    out = Path(out)
    lock = out.with_name(f".{out.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrtkInputError(f"another process is writing {out}: wait for it to finish, "
                                 "or give this run its own output") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def prepare_run_folder(folder: Path, run_key: dict, discard: bool) -> None:
    """Create the folder that keeps a long run's finished parts, or check that the one found is this run's.

    ``run_key`` identifies the run (settings, model, data); a folder left by another run is refused,
    unless ``discard``, which starts over.
    """
    stamp = folder / "run.json"
    key = json.dumps(run_key, sort_keys=True)
    if discard and folder.exists():
        shutil.rmtree(folder)
    if folder.exists() and stamp.exists() and stamp.read_text() != key:
        raise PrtkInputError(f"{folder} holds a run with other settings, model or data: remove it or pass --force")
    folder.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        write_bytes_atomic(stamp, key.encode())
