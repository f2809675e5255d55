"""Small file utilities: atomic writes, safetensors without pickle, checked JSON configs.

A file written here either has its full new content or its old one: data goes to a temporary
file in the target's directory, is flushed and ``fsync``-ed, then moved over the target with
``os.replace`` (atomic on POSIX and Windows). Tensors are stored only as ``safetensors``; this
library never unpickles weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

__all__ = [
    "atomic_folder",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_tensor_shapes",
    "finished_run",
    "json_safe",
    "load_safetensors",
    "read_json_object",
    "read_npz_headers",
    "read_safetensors_metadata",
    "save_safetensors_atomic",
    "sha256_file",
]

PathLike = str | os.PathLike


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """The target's current mode, else what ``open()`` gives (0o666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the parent directory must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0o600 files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as UTF-8 JSON atomically. NaN/inf are rejected (strict JSON)."""
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN): a one-seed std or
    an undefined ratio reads as ``null``, not as an invalid file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def save_safetensors_atomic(
    tensors: dict[str, Tensor], path: PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` (moved to CPU, made contiguous) as a safetensors file, atomically.

    Tensors sharing storage (tied weights) are refused by safetensors; pass one copy.
    """
    bad = [
        k for k, v in (metadata or {}).items() if not (isinstance(k, str) and isinstance(v, str))
    ]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; bad entries: {bad}")
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, save(cpu, metadata=metadata))


def load_safetensors(path: PathLike, device: str = "cpu") -> dict[str, Tensor]:
    """Load every tensor of a safetensors file; unreadable files raise ``ValueError``."""
    try:
        return load_file(Path(path), device=device)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read safetensors file {path}: {err}") from None


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` header of a safetensors file (empty dict when absent)."""
    try:
        with safe_open(Path(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read safetensors file {path}: {err}") from None


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes (ties a JSON config to the weights it describes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: PathLike, required: dict[str, type] | None = None) -> dict[str, Any]:
    """Read a JSON object; ``required`` maps keys to types (``float`` accepts ints, bools fail).

    Raises ``ValueError`` naming the file and the first missing or mistyped key.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read JSON file {path}: {err}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    for key, kind in (required or {}).items():
        value = obj.get(key)
        ok = isinstance(value, (int, float) if kind is float else kind)
        if key not in obj or not ok or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"{path}: key {key!r} must be a {kind.__name__}, got {value!r}")
    return obj


def check_tensor_shapes(expected: dict[str, Tensor], found: dict[str, Tensor], where: str) -> None:
    """Raise ``ValueError`` naming any missing, unexpected or mis-shaped tensor key."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise ValueError(f"{where}: missing tensors {missing}, unexpected tensors {extra}")
    for key, ref in expected.items():
        if found[key].shape != ref.shape:
            raise ValueError(
                f"{where}: tensor {key!r} has shape {tuple(found[key].shape)}, "
                f"expected {tuple(ref.shape)}"
            )


@contextlib.contextmanager
def atomic_folder(final: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces
    ``final`` (an old ``final`` is moved aside, then removed), when it fails it is removed and
    ``final`` is untouched. A reader sees the old folder or the complete new one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old.{tmp.name}"
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finished_run(out: PathLike) -> dict[str, Any] | None:
    """A benchmark cell's ``metrics.json`` if the run in ``out`` finished, else None. A partial
    folder is left alone: the cell resumes it under its lock (``bench.runner.locked_cell``)."""
    done = Path(out) / "metrics.json"
    return json.loads(done.read_text()) if done.exists() else None


_NPY_MAGIC = b"\x93NUMPY"


def _what_it_is(path: Path) -> str:
    """A guess at what a file that is not a zip archive is, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(_NPY_MAGIC):
        return "a single .npy array renamed .npz (save with np.savez)"
    if head.startswith(b"PK"):
        return "a truncated or damaged zip archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not an .npz archive"
    return "not an .npz archive (a text file renamed .npz?)"


def read_npz_headers(path: PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``name -> (shape, dtype)`` of every array of an ``.npz`` file, read from the ``.npy``
    headers alone: nothing is decompressed past them, so a hostile file costs no memory.

    Raises ``ValueError`` naming the file and what is wrong: not a zip archive (empty, text, a
    bare ``.npy``), a member that is not an ``.npy`` array, an object array (pickle), an array
    whose header declares more or fewer bytes than the archive holds for it.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        if isinstance(err, OSError) and not path.is_file():
            raise
        raise ValueError(f"cannot read {path}: {_what_it_is(path)}") from None
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: member {info.filename!r} is not an .npy array")
            try:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = {
                        (1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0,
                    }.get(version)
                    if read is None:
                        raise ValueError(f"unsupported .npy format version {version}")
                    shape, _, dtype = read(f)
                    offset = f.tell()
            except (ValueError, EOFError, OSError, zipfile.BadZipFile) as err:
                raise ValueError(
                    f"{path}: member {info.filename!r} is not a readable .npy array ({err})"
                ) from None
            name = info.filename[:-4]
            if dtype.hasobject:
                raise ValueError(f"{path}: array {name!r} holds Python objects")
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size != offset + nbytes:  # the archive's own record of the size
                raise ValueError(
                    f"{path}: array {name!r} declares shape {tuple(shape)} of {dtype} "
                    f"({nbytes} bytes) but holds {info.file_size - offset} bytes"
                )
            headers[name] = (tuple(shape), dtype)
    return headers
