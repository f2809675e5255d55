"""The corrupted and malformed ``.npz`` mixture files of ``bad_inputs.py`` (one builder per
case: ``NPZ`` lists ``(name, build(tmp) -> path)``)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _npz(tmp: Path, name: str, **arrays) -> Path:
    path = tmp / name
    np.savez(path, **arrays)
    return path


def _good(tmp: Path, name: str = "good.npz") -> Path:
    return _npz(tmp, name, means=np.eye(2), weights=np.ones(2), stds=np.ones(2))


def _bytes(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _huge_header(tmp: Path) -> Path:
    """A zip whose ``means.npy`` declares (10^6, 10^5) float64 but holds a few bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**5)}
    )
    with zipfile.ZipFile(tmp / "huge.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("means.npy", buf.getvalue() + bytes(64))
        z.writestr("weights.npy", _npy(np.ones(10**6)))
    return tmp / "huge.npz"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _zip_with_text(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "text-member.npz", "w") as z:
        z.writestr("means.npy", _npy(np.eye(2)))
        z.writestr("weights.txt", "1 1")
    return tmp / "text-member.npz"


def _object_member(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "object.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        z.writestr("means.npy", buf.getvalue())
        z.writestr("weights.npy", _npy(np.ones(2)))
    return tmp / "object.npz"


NPZ: list[tuple[str, Callable[[Path], Path]]] = [
    ("empty file", lambda t: _bytes(t, "empty.npz", b"")),
    ("truncated archive", lambda t: _bytes(t, "cut.npz", _good(t).read_bytes()[:200])),
    ("text file renamed .npz", lambda t: _bytes(t, "text.npz", b"means = [[0, 1]]\n")),
    (".npy renamed .npz", lambda t: _bytes(t, "single.npz", _npy(np.eye(2)))),
    ("string-typed means", lambda t: _npz(t, "s.npz", means=np.array([["a", "b"]]), weights=[1])),
    ("missing weights", lambda t: _npz(t, "nw.npz", means=np.eye(2), stds=np.ones(2))),
    ("object (pickled) member", _object_member),
    ("3-D means", lambda t: _npz(t, "m3.npz", means=np.ones((2, 2, 2)), weights=np.ones(2))),
    (
        "NaN in means",
        lambda t: _npz(t, "nan.npz", means=np.full((2, 2), np.nan), weights=[1, 1], stds=[1, 1]),
    ),
    (
        "negative weights",
        lambda t: _npz(t, "nw2.npz", means=np.eye(2), weights=[-1, 1], stds=[1, 1]),
    ),
    ("zero stds", lambda t: _npz(t, "zs.npz", means=np.eye(2), weights=[1, 1], stds=[0, 1])),
    ("huge declared shape", _huge_header),
    (
        "float labels",
        lambda t: _npz(t, "fl.npz", means=np.eye(2), weights=[1, 1], stds=[1, 1], labels=[0.0, 1]),
    ),
    (
        "unknown array",
        lambda t: _npz(t, "uk.npz", means=np.eye(2), weights=[1, 1], stds=[1, 1], extra=[1]),
    ),
    (
        "complex means",
        lambda t: _npz(t, "cx.npz", means=np.eye(2) * 1j, weights=[1, 1], stds=[1, 1]),
    ),
    ("zip with a text member", _zip_with_text),
    ("a folder named x.npz", lambda t: (t / "dir.npz").mkdir() or t / "dir.npz"),
    (
        "non-symmetric covs",
        lambda t: _npz(
            t, "cv.npz", means=np.eye(2), weights=[1, 1], covs=np.array([[[1, 2], [0, 1]]] * 2)
        ),
    ),
    ("inf in stds", lambda t: _npz(t, "is.npz", means=np.eye(2), weights=[1, 1], stds=[np.inf, 1])),
    ("missing file", lambda t: t / "missing.npz"),
]
