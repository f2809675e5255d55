"""One writer per run folder, and a ``--resume`` that continues the same run.

:func:`open_run_folder` is what a command holds while it writes a run folder ``out``:

- the lock ``out/.lock`` (created with ``O_CREAT | O_EXCL``, holding the pid and host of its
  holder) refuses a second run on the same folder, fresh or ``--resume``, naming the holder. A
  lock whose process is gone (same host) is stale: it is taken over. Only rank 0 locks under
  ``torchrun``;
- on ``--resume``, the folder's ``config.json`` must equal the new config except the steps key,
  so a resumed run never trains the checkpoint with settings other than those ``config.json``
  records. The steps may not change either when a schedule spans them (``lr_decay``,
  ``lr_schedule``). A key the folder's ``config.json`` lacks (a field added by a later version)
  is accepted when its new value is the field's default — the convention every added field
  keeps: its default is the behaviour from before it existed — and named on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = [
    "RunFolderBusy",
    "check_resume_config",
    "open_run_folder",
    "run_lock",
    "wait_for_first_rank",
]

LOCK_NAME = ".lock"
# a value other than false/"constant" ties the schedule to the total steps
SCHEDULE_KEYS = ("lr_decay", "lr_schedule")
_UNREADABLE_GRACE_S = 60.0  # a lock being written by a starting run is empty for a moment


class RunFolderBusy(UserError):
    """Another run holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder(lock: Path) -> dict[str, Any] | None:
    """The lock's content, or None while it is unreadable (being written, or garbage)."""
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _stale(lock: Path, holder: dict[str, Any] | None) -> bool:
    if holder is None:
        try:
            return time.time() - lock.stat().st_mtime > _UNREADABLE_GRACE_S
        except FileNotFoundError:
            return True
    return holder.get("host") == socket.gethostname() and not _alive(holder["pid"])


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``out/.lock`` for the block (creating ``out``); refuse if a live run holds it."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%FT%T%z")}
    for _ in range(2):  # the second try follows the removal of a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _holder(lock)
            if not _stale(lock, holder):
                who = (
                    f"pid {holder['pid']} on {holder.get('host')}, since {holder.get('since')}"
                    if holder
                    else "a run that is starting"
                )
                raise RunFolderBusy(
                    f"--out {out} is in use by another run ({who}); wait for it to end, or "
                    f"remove {lock} if that process is gone"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    else:
        raise RunFolderBusy(f"--out {out}: cannot take {lock} (another run took it first)")
    with os.fdopen(fd, "w") as fh:
        json.dump(me, fh)
    try:
        yield out
    finally:
        if _holder(lock) == me:
            lock.unlink()


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _predating(
    saved: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None
) -> list[str]:
    """The keys of ``new`` that ``saved`` lacks and whose new value is their field default."""
    if not defaults:
        return []
    flat = _flat(defaults)
    return sorted(k for k in new if k not in saved and k in flat and flat[k] == new[k])


def check_resume_config(
    out: Path,
    config: Mapping[str, Any],
    steps_key: str = "train.steps",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Refuse ``--resume`` when ``config`` differs from ``out/config.json`` in anything but
    ``steps_key`` (nor in that when a :data:`SCHEDULE_KEYS` flag ties a schedule to it).

    Keys the stored file has beyond ``config`` (e.g. a ``preset`` name) are not compared. A key
    the stored file lacks is accepted when its value in ``config`` equals its value in
    ``defaults`` (``config.field_defaults``: a field added after the run was started, at the
    default that reproduces the behaviour from before it); it is named on stderr.
    """
    path = out / "config.json"
    if not path.exists():
        return
    try:
        saved = _flat(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        raise UserError(f"--resume: cannot read {path} ({err}); start a new --out") from None
    new = _flat(json.loads(json.dumps(dict(config))))  # tuples -> lists, as stored
    predating = _predating(saved, new, defaults)
    keys = sorted(k for k in new if k != steps_key and saved.get(k, new[k]) != new[k])
    keys += sorted(k for k in new if k not in saved and k != steps_key and k not in predating)
    if keys:
        diff = "; ".join(f"{k} {saved.get(k, '(absent)')!r} -> {new[k]!r}" for k in keys)
        raise UserError(
            f"--resume: {out} was run with another config ({diff}); only {steps_key} may change "
            "on resume: pass the run's own values (its config.json) or start a new --out"
        )
    ties = [
        k
        for k in new
        if k.rsplit(".", 1)[-1] in SCHEDULE_KEYS and new[k] not in (False, None, "constant")
    ]
    if ties and steps_key in saved and saved[steps_key] != new.get(steps_key):
        raise UserError(
            f"--resume: {steps_key} cannot change from {saved[steps_key]} to "
            f"{new.get(steps_key)} with {ties[0]}={json.dumps(new[ties[0]])}: the schedule spans "
            "the steps, so the steps already taken would have used other values; keep it or start a new --out"
        )
    if predating:
        named = ", ".join(f"{k}={json.dumps(new[k])}" for k in predating)
        print(f"--resume: {path} predates {named}; resuming at the default", file=sys.stderr)


def wait_for_first_rank(out: Path, timeout_s: float = 600.0, poll_s: float = 0.05) -> None:
    """Under ``torchrun``, a rank other than 0 waits until rank 0 holds ``out/.lock``: rank 0
    checks that a fresh ``--out`` is empty before it locks, and a faster rank writing into the
    folder first (a teacher's checkpoints, say) would fail that check."""
    deadline = time.monotonic() + timeout_s
    while not (out / LOCK_NAME).exists():
        if time.monotonic() > deadline:
            raise UserError(f"--out {out}: rank 0 did not lock the folder within {timeout_s:.0f} s")
        time.sleep(poll_s)


@contextlib.contextmanager
def open_run_folder(
    out: Path,
    config: Mapping[str, Any],
    *,
    resume: bool,
    steps_key: str = "train.steps",
    defaults: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """Lock ``out`` for the block and, on ``resume``, check ``config`` against the folder's
    (``defaults``: the config type's field defaults, see :func:`check_resume_config`); under
    ``torchrun`` only rank 0 locks and checks (it is the one writer), and the other ranks start
    once it holds the lock (:func:`wait_for_first_rank`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        wait_for_first_rank(out)
        yield out
        return
    with run_lock(out):
        if resume:
            check_resume_config(out, config, steps_key, defaults)
        yield out
