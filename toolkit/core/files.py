"""Writing artifacts without losing anything: temporary file + rename, and no silent overwrite."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from prtk.core.errors import PrtkInputError


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing one unless ``force``, a
    directory, a path under a file, or one in a folder this process cannot write. Returns ``path`` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise PrtkInputError(f"output is a directory, not a file: {path}")
    if path.exists() and not force:
        raise PrtkInputError(f"output exists: {path} (pass --force to overwrite)")
    _check_folder_writable(path.parent, path)
    return path


def check_writable_folder(folder: str | Path) -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PrtkInputError(f"output folder is a file: {folder}")
    _check_folder_writable(folder, folder)
    return folder


def _check_folder_writable(folder: Path, output: Path) -> None:
    """The nearest existing ancestor of ``folder`` (``folder`` itself if it exists) must be a folder in which
    this process can create files: tried by creating and removing a file (permission bits do not bind root)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PrtkInputError(f"cannot write {output}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".prtk-probe-", dir=existing)
    except OSError as error:
        raise PrtkInputError(f"cannot write {output}: folder {existing} is not writable "
                             f"({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)


def check_not_an_input(output: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output path that is one of the command's inputs (``{option: path}``), ``--force`` or not."""
    output = Path(output)
    for option, given in inputs.items():
        if given is None:
            continue
        given = Path(given)
        same = output.resolve() == given.resolve() or (output.exists() and given.exists()
                                                      and os.path.samefile(output, given))
        if same:
            raise PrtkInputError(f"output {output} is the input {option} {given}: write it somewhere else")


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


def read_run_part(path: str | Path, read):
    """``read(path)`` for a file that a resumable run saved (a finished chunk, an epoch's state); a corrupt or
    truncated one is reported in one line naming it, with the way out."""
    try:
        return read(path)
    except Exception as error:  # safetensors, torch and pickle failures share no base class
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise PrtkInputError(f"saved part of an interrupted run is unreadable: {path} ({reason}); "
                             "pass --force to discard the partial run and start over") from None


def load_torch_state(path: str | Path, map_location="cpu") -> dict:
    """A training state written by ``write_torch_atomic``, read with ``weights_only=True``."""
    import torch

    return read_run_part(path, lambda where: torch.load(where, map_location=map_location, weights_only=True))


def write_json_atomic(path: str | Path, document: dict) -> None:
    write_bytes_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


COMMIT_JOURNAL = ".{name}.commit.json"  # beside the files of a unit being moved into place


def commit_together(name: str, moves: list[tuple[Path, Path]]) -> None:
    """Move staged files into place as one unit (e.g. a graph and its sidecar), ``moves`` = [(staged, final)].

    Two renames cannot be one atomic step, so a journal naming every move is written first and removed
    last; ``finish_commits`` (run by every reader of such files) completes an interrupted unit. A kill
    therefore leaves the old files, or — once the journal exists — files that become the new unit on the
    next read, never a mix that stays.
    """
    folder = moves[0][1].parent
    journal = folder / COMMIT_JOURNAL.format(name=name)
    write_json_atomic(journal, {"moves": [[os.path.relpath(staged, folder), final.name] for staged, final in moves]})
    _replace_all(folder, journal)


def finish_commits(folder: str | Path) -> None:
    """Complete every unit in ``folder`` whose ``commit_together`` was interrupted."""
    folder = Path(folder)
    if folder.is_dir():
        for journal in sorted(folder.glob(COMMIT_JOURNAL.format(name="*"))):
            _replace_all(folder, journal)


def _replace_all(folder: Path, journal: Path) -> None:
    try:
        moves = json.loads(journal.read_text())["moves"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PrtkInputError(f"unreadable commit journal {journal}: check the files beside it, "
                             "then remove it") from None
    for staged, final in moves:
        if (folder / staged).exists():  # a staged file is gone only once it has been moved
            os.replace(folder / staged, folder / final)
    _fsync_folder(folder)
    journal.unlink()


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
