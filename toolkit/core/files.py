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


@contextmanager
def temporary_files_in(folder: str | Path):
    """Python's temporary files (``tempfile``: torch's exporter, ONNX Runtime's quantizer) go into ``folder`` for the
    duration, so that a killed run leaves them in a folder its next run removes, not in the system's temp folder."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


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
COMMIT_LOCK = ".prtk-commit.lock"  # held while a folder's units are moved into place, or read as a pair
WRITER_LOCK = ".prtk-writer.lock"  # held by the one command writing a folder's artifacts


def commit_together(name: str, moves: list[tuple[Path, Path]]) -> None:
    """Move staged files into place as one unit (e.g. a graph and its sidecar), ``moves`` = [(staged, final)].

    Two renames cannot be one atomic step, so a journal naming every move is written first and removed
    last; ``finish_commits`` (run by every reader of such files) completes an interrupted unit. A kill
    therefore leaves the old files, or — once the journal exists — files that become the new unit on the
    next read, never a mix that stays. The folder's commit lock is held throughout, so a reader holding it
    (``commit_lock``) sees the unit before or after, never half-moved.
    """
    folder = moves[0][1].parent
    journal = folder / COMMIT_JOURNAL.format(name=name)
    with commit_lock(folder):
        write_json_atomic(journal, {"moves": [[os.path.relpath(staged, folder), final.name]
                                              for staged, final in moves]})
        _replace_all(folder, journal)


def finish_commits(folder: str | Path) -> None:
    """Complete every unit in ``folder`` whose ``commit_together`` was interrupted (under the commit lock)."""
    folder = Path(folder)
    if folder.is_dir():
        with commit_lock(folder):
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


_HELD_LOCKS: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


@contextmanager
def _file_lock(lock: Path, blocking: bool, busy: str, needs_folder: bool = True, reentrant: bool = True):
    """Hold an exclusive ``flock`` on the file ``lock`` (created, and removed on release); ``busy`` is the one-line
    refusal when another holder has it and ``blocking`` is off. ``reentrant``: a process that holds it already
    enters again (else it is refused like another process). A process that waited on a lock file its holder
    removed locks the new file instead (the inode is checked after locking). Without ``needs_folder``, a folder
    where the lock cannot be created (read-only: nobody writes there either) is not locked."""
    import fcntl

    key = lock.absolute()
    if reentrant and key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    if needs_folder:
        lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            handle = open(lock, "a")
        except OSError:
            if needs_folder:
                raise
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            raise PrtkInputError(busy) from None
        try:
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    _HELD_LOCKS[key] = 1
    try:
        yield
    finally:
        _HELD_LOCKS.pop(key, None)
        lock.unlink(missing_ok=True)
        handle.close()


@contextmanager
def output_lock(out: str | Path):
    """Hold an exclusive lock on ``.<out>.lock`` beside ``out`` while a run writes it; a second process
    writing the same output (e.g. two ``--shard`` runs given one ``--out``) is refused in one line."""
    out = Path(out)
    with _file_lock(out.with_name(f".{out.name}.lock"), False,
                    f"another process is writing {out}: wait for it to finish, or give this run its own output",
                    reentrant=False):
        yield


@contextmanager
def folder_writer_lock(folder: str | Path, command: str):
    """Hold the lock of the one ``command`` (export, prune-structure, build-engine) writing artifacts into
    ``folder``; a second writer is refused in one line, before it writes anything."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        with _file_lock(folder / WRITER_LOCK, False,
                        f"another prtk command is writing {folder}: wait for it to finish, or {command} into another "
                        "folder"):
            yield
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # refused before writing: leave no empty folder behind


@contextmanager
def commit_lock(folder: str | Path):
    """Hold ``folder``'s commit lock: no unit is half-moved into place while it is held (waits for a mover)."""
    with _file_lock(Path(folder) / COMMIT_LOCK, True, "", needs_folder=False):
        yield


def check_distinct_outputs(outputs: list[tuple[str, str | Path | None]]) -> None:
    """Refuse, before any work, two outputs of one command (``(role, path)`` pairs; None: not written) that are
    one path, or one inside the other's folder: one would replace the other, ``--force`` or not."""
    given = [(role, Path(path)) for role, path in outputs if path is not None]
    for index, (role, path) in enumerate(given):
        for other_role, other in given[index + 1:]:
            if _same_or_inside(path, other) or _same_or_inside(other, path):
                raise PrtkInputError(f"{role} {path} is also {other_role} {other} of this command: "
                                     "give it another name")


def _same_or_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside it."""
    resolved, container = path.resolve(), other.resolve()
    if resolved == container or container in resolved.parents:
        return True
    return path.exists() and other.exists() and os.path.samefile(path, other)


def prepare_run_folder(folder: Path, run_key: dict, discard: bool) -> None:
    """Create the folder that keeps a long run's finished parts, or check that the one found is this run's.

    ``run_key`` identifies the run (settings, model, data); the intra-op CPU thread count is added to it, as CPU
    arithmetic (and so the bytes written) can depend on it. A folder left by another run is refused, naming what
    differs, unless ``discard``, which starts over.
    """
    import torch

    stamp = folder / "run.json"
    run_key = run_key | {"threads": torch.get_num_threads()}
    key = json.dumps(run_key, sort_keys=True)
    if discard and folder.exists():
        shutil.rmtree(folder)
    if folder.exists() and stamp.exists() and stamp.read_text() != key:
        try:
            found = json.loads(stamp.read_text())
        except ValueError:
            found = {}
        differing = sorted(name for name in set(found) | set(run_key) if found.get(name) != run_key.get(name))
        threads = (f" (it ran with {found['threads']} intra-op threads, this run has {run_key['threads']}: give "
                   "--threads or OMP_NUM_THREADS the same count to continue it)"
                   if differing == ["threads"] and "threads" in found else "")
        raise PrtkInputError(f"{folder} holds a run with other {', '.join(differing) or 'settings'}{threads}: "
                             "remove it or pass --force to start over")
    folder.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        write_bytes_atomic(stamp, key.encode())
