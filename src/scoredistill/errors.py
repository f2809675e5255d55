"""Who caused a failure, and what the command line says about it (``docs/errors.md``).

Exit codes of ``scoredistill``:

- ``0``: success;
- ``1``: an internal error (a bug): the traceback, then a line asking to report it;
- ``2``: bad input (a flag, a ``--set`` value, a file, the ``--out`` folder): one line on stderr
  naming the file, key or value and what would be valid; nothing is trained;
- ``3``: training stopped because a loss or gradient became NaN/inf: one line naming the
  quantity and the step (counted as checkpoints count: completed updates); the last checkpoint
  is intact.

:func:`user_message` is the one classifier: it returns the line for a user-caused exception and
None for anything else (a bug). This module is the bottom of the package: it imports nothing
from it.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import sys
import traceback
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "EXIT_BUG",
    "EXIT_NONFINITE",
    "EXIT_OK",
    "EXIT_USAGE",
    "SEED_MAX",
    "NonFiniteError",
    "UserError",
    "check_flag_values",
    "report",
    "user_message",
]

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_NONFINITE = 0, 1, 2, 3
SEED_MAX = 2**32 - 1  # derived seeds (seed * 1_000_003 + epoch, seed + 7919 * rank) stay < 2**64


class UserError(ValueError):
    """Bad input: a value, key, file or folder the user gave. Exit code 2, one line."""


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf. ``step`` counts completed updates (the number a
    checkpoint written just before would carry). Exit code 3."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` (itself included) that exists and is not a folder."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


def _os_message(exc: OSError) -> str | None:
    """The line for an OS error on a named path; None for one without a path (not the user's)."""
    name = exc.filename
    if name is None:  # no errno either: raised with a message by this package (a missing file)
        return _first_line(exc) if exc.errno is None else None
    path = Path(os.fsdecode(name))
    if isinstance(exc, NotADirectoryError):
        blocker = _blocking_file(path)
        where = f"{blocker} is a file" if blocker is not None else "a part of it is a file"
        return f"cannot use {path}: {where}, not a folder; choose another path"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder; expected a file"
    if isinstance(exc, FileExistsError):
        return f"{path} already exists (as a file?); choose another path"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied: cannot write or read {path}; choose a folder you can write"
    if isinstance(exc, FileNotFoundError):
        return f"no such file or folder: {path}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left while writing {path}; free some space or choose another --out"
    return f"cannot access {path}: {exc.strerror or _first_line(exc)}"


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a user-caused failure, or None for an internal error (a bug).

    User-caused: :class:`UserError` and every ``ValueError`` (the library's contract for a bad
    argument, key or file), OS errors on a named path (a file where a folder should be, no
    permission, a read-only or full disk), and the errors of reading a damaged archive
    (``EOFError``, ``zipfile.BadZipFile``, a pickle error: a file that is not what its name says).
    """
    if isinstance(exc, OSError):
        return _os_message(exc)
    if isinstance(exc, EOFError):
        return f"a file ended early (empty or truncated): {_first_line(exc)}"
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a valid archive (a file renamed .npz?): {_first_line(exc)}"
    if isinstance(exc, pickle.UnpicklingError):
        return f"not a valid archive (a file renamed .npz?): {_first_line(exc)}"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, ValueError):
        return _first_line(exc)
    return None


def check_flag_values(values: Mapping[str, Any]) -> None:
    """Reject parsed command-line values no command can use: NaN/inf floats and seeds outside
    ``[0, SEED_MAX]`` (every ``*seed`` flag). Keys are argparse destinations (``testbed_seed``)."""
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
        seeds = value if name.endswith("seeds") and isinstance(value, tuple | list) else ()
        if name.endswith("seed"):
            seeds = (value,)
        for seed in seeds:
            is_int = isinstance(seed, int) and not isinstance(seed, bool)
            if is_int and not 0 <= seed <= SEED_MAX:
                raise UserError(f"{flag}: a seed must be an integer in [0, {SEED_MAX}], got {seed}")


def report(exc: Exception, file: TextIO | None = None) -> int:
    """Print what the user should read about ``exc`` and return the exit code: one line for bad
    input (2) and a non-finite stop (3); the traceback and a request to report it otherwise (1)."""
    file = file if file is not None else sys.stderr
    if isinstance(exc, NonFiniteError):
        print(f"scoredistill: stopped: {_first_line(exc)}", file=file)
        return EXIT_NONFINITE
    message = user_message(exc)
    if message is not None:
        print(f"scoredistill: error: {message}", file=file)
        return EXIT_USAGE
    traceback.print_exception(exc, file=file)
    print(
        "scoredistill: internal error (a bug, not your input): please report it with the "
        "command line and the traceback above",
        file=file,
    )
    return EXIT_BUG
