"""The one atomic writer of the package: files and folders appear complete or not at all.

Every result, shard, checkpoint and exported model goes through here, so that a run killed at any moment leaves
either the old file or the new one, never half of one, and resuming can trust what is on disk. Files are created
with mode ``0o666`` filtered by the process umask (``0o644`` under the usual umask 022), like ``open(path, "w")``;
``tempfile.mkstemp`` would make them owner-only (``0o600``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "atomic_path", "atomic_write", "atomic_write_json", "atomic_folder", "current_umask", "Cell",
           "CellStore", "check_output_folder", "check_output_file"]


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing and move it onto ``path`` when the block succeeds.

    ``mode`` is ``"wb"`` or ``"w"``. On an exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a library that opens files by name (HDF5); on success it is moved
    onto ``path`` with the umask's permissions, on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; return the path."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (floats for numpy scalars) atomically."""
    return atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (two renames).

    A reader sees the old complete folder or the new complete one. Files written into it by other libraries
    (``save_pretrained``, safetensors) get the umask's permissions afterwards, since some create owner-only files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir(mode=0o777)
    try:
        yield tmp
        mask = current_umask()
        for item in [tmp, *tmp.rglob("*")]:
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
        old = None
        if path.exists():
            old = _temp_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Cell:
    """One resumable unit of work: a folder holding ``cell.json`` (what it computes), ``result.json`` (its
    result, once done) and whatever artifacts it writes meanwhile (e.g. sample shards)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    def result(self) -> dict | None:
        """The stored result, or ``None`` while the cell is not finished."""
        if not self.result_path.is_file():
            return None
        return json.loads(self.result_path.read_text())

    def save(self, result: dict) -> dict:
        """Store the result atomically and return it as read back (JSON types, as a resumed run sees it)."""
        atomic_write_json(self.result_path, result)
        return self.result()


class CellStore:
    """The one resumable result store of the package: the eval sweep and both benchmarks keep their cells here.

    ``store.cell(key, manifest)`` opens the folder ``root/key``; its ``cell.json`` must describe the same
    computation as ``manifest`` (a mismatch raises instead of mixing two runs' partial results). ``store.ensure(key,
    manifest, compute)`` returns the stored result or computes, stores and returns it.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def cell(self, key: str | os.PathLike, manifest: dict | None = None, check_only: bool = False) -> Cell:
        """Open cell ``key``; write ``manifest`` the first time, compare it afterwards.

        ``check_only`` compares without writing (other processes of a distributed run, after the main one wrote).
        """
        folder = self.root / key
        if manifest is not None:
            path = folder / "cell.json"
            if path.is_file():
                old = json.loads(path.read_text())
                new = json.loads(json.dumps(manifest, default=float))
                diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
                if diff:
                    raise ValueError(f"{folder} holds results of a different run ({diff}); use another output "
                                     "folder or delete that one")
            elif not check_only:
                atomic_write_json(path, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        return Cell(folder)

    def ensure(self, key: str | os.PathLike, manifest: dict | None, compute) -> dict:
        """The result of cell ``key``: read back if finished, else ``compute()`` stored atomically."""
        cell = self.cell(key, manifest)
        done = cell.result()
        return done if done is not None else cell.save(compute())

    def results(self, pattern: str = "**/result.json") -> list[dict]:
        """Every finished result under the store (sorted by path)."""
        return [json.loads(p.read_text()) for p in sorted(self.root.glob(pattern))]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created or written (``ValueError``
    naming ``flag``); nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder: pass a folder (it is created if missing)")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise ValueError(f"{flag} {path} cannot be created: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be written: no write permission on {base}; pass another folder")
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out", suffix: str | None = None) -> Path:
    """Refuse, before any work, an output file path that is a folder, has the wrong ``suffix`` or whose folder
    cannot be created or written (``ValueError`` naming ``flag``); nothing is created."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{flag} must end in {suffix}, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: pass a file name ending in {suffix or 'the file type'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} cannot be overwritten: no write permission")
    check_output_folder(path.parent, flag=f"{flag} {path}: its folder")
    return path
