"""Image data sets as float tensors ``(N, C, H, W)`` in [-1, 1] with integer labels.

- ``load_digits_images``: scikit-learn's bundled 8×8 digits (1797 images, pixel values 0..16,
  mapped by ``x/8 − 1``), split once into train / held-out by a seeded, class-stratified
  permutation, so the teacher, the feature network and the metrics agree on which images are
  held out.
- ``load_image_folder``: a user's folder of PNG/JPEG images, read with Pillow. Class labels come
  from sorted subfolder names when the folder holds class subfolders; otherwise the images are
  unlabelled (``labels`` is None).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DIGITS_HELDOUT_FRACTION",
    "IMAGE_SUFFIXES",
    "ImageData",
    "load_digits_images",
    "load_image_folder",
]

DIGITS_HELDOUT_FRACTION = 0.25  # 450 held-out digits: enough for a 64-feature Fréchet distance
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageData:
    """Images ``x: (N, C, H, W)`` float32 in [-1, 1]; ``labels: (N,)`` int64 or None.

    ``classes`` names label ``i`` (the subfolder name, or the digit), empty when unlabelled.
    """

    x: Tensor
    labels: Tensor | None
    classes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _digits_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: the first ``round(fraction·n_c)`` of a seeded permutation of each class."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(DIGITS_HELDOUT_FRACTION * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_images(split: str = "train", seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 digits as ``x: (N, 1, 8, 8)`` in [-1, 1], ``labels: (N,)`` in 0..9.

    ``split``: ``"train"`` (1347 images), ``"test"`` (the 450 held out) or ``"all"`` (1797).
    The split is a fixed function of ``seed`` (stratified by class); pixels ``v`` in 0..16 map to
    ``v/8 − 1``.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = load_digits()
    y = data.target.astype(np.int64)
    x = data.images.astype(np.float32) / 8.0 - 1.0
    if split != "all":
        train, test = _digits_split(y, seed)
        keep = train if split == "train" else test
        x, y = x[keep], y[keep]
    return ImageData(
        torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y), tuple(str(c) for c in range(10))
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, size: int | None, channels: int | None) -> np.ndarray:
    """One image as ``(C, H, W)`` float32 in [-1, 1]; ``ValueError`` naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if channels is None:
                mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            elif channels in (1, 3):
                mode = "L" if channels == 1 else "RGB"
            else:
                raise ValueError(f"channels must be 1, 3 or None, got {channels}")
            img = img.convert(mode)
            if size is not None:
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.clip(arr / 127.5 - 1.0, -1.0, 1.0)


def load_image_folder(
    path: str | os.PathLike, size: int | None = None, channels: int | None = None
) -> ImageData:
    """PNG/JPEG images under ``path`` as ``x: (N, C, H, W)`` in [-1, 1].

    If ``path`` holds subfolders with images, each subfolder is a class (labels 0.. in sorted
    name order; loose files at the top level are then an error); otherwise the top-level images
    are unlabelled. ``size`` resizes every image to ``size × size`` (bicubic); without it all
    images must share one size. ``channels`` (1 or 3) converts to grey or RGB; by default grey
    images stay 1-channel, everything else becomes RGB, and a folder mixing both becomes RGB.
    Raises ``ValueError`` with one line naming the folder or file at fault.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist or is not a directory")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))
    loose = _image_files(folder)
    if subdirs and loose:
        raise ValueError(
            f"{folder} mixes class subfolders ({subdirs[0].name}, ...) with loose images "
            f"({loose[0].name}, ...); put every image in a class subfolder or none"
        )
    groups = [(i, _image_files(d)) for i, d in enumerate(subdirs)] if subdirs else [(-1, loose)]
    files = [(label, f) for label, fs in groups for f in fs]
    if not files:
        raise ValueError(
            f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images "
            "(neither at the top level nor in class subfolders)"
        )
    arrays = [_read_image(f, size, channels) for _, f in files]
    if channels is None and len({a.shape[0] for a in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    first = arrays[0].shape
    for (_, f), a in zip(files, arrays, strict=True):
        if a.shape != first:
            raise ValueError(
                f"image {f} has size {a.shape[2]}x{a.shape[1]} but {files[0][1].name} has "
                f"{first[2]}x{first[1]}; pass size=N to resize every image to N x N"
            )
    x = torch.from_numpy(np.stack(arrays))
    if not subdirs:
        return ImageData(x, None, ())
    labels = torch.tensor([label for label, _ in files], dtype=torch.int64)
    return ImageData(x, labels, tuple(d.name for d in subdirs))
