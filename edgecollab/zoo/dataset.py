"""Labelled test sets in the IDX format (as used by MNIST and Fashion-MNIST)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError

# IDX type codes (third byte of the magic number) -> numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ModelError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ModelError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise ModelError(f"{path}: header promises {expected} bytes of data, file holds {len(raw) - header_end}")
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzip-compressed when ``path`` ends in .gz), e.g. a user's own test set."""
    codes = {
        np.dtype(v).newbyteorder(">") if np.dtype(v).itemsize > 1 else np.dtype(v): k for k, v in _IDX_DTYPES.items()
    }
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in codes or array.ndim > 255:
        raise ModelError(f"IDX cannot hold {array.dtype} arrays of {array.ndim} dimensions")
    header = bytes([0, 0, codes[dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=dtype).tobytes())


@dataclass(frozen=True)
class LabelledSet:
    """Inputs (shaped as the model takes them) and their integer labels."""

    inputs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_labelled_set(images: Path, labels: Path, input_shape: tuple[int, ...], upscale: int = 1) -> LabelledSet:
    """Load an IDX image/label pair, reshaping each image to ``input_shape``.

    With ``upscale`` > 1 the stored images are that many times smaller than ``input_shape``
    in their last two dimensions and are enlarged by repeating pixels (nearest neighbour).
    """
    x = read_idx(images)
    y = read_idx(labels).astype(np.int64)
    if len(x) != len(y):
        raise ModelError(f"{images} holds {len(x)} inputs but {labels} holds {len(y)} labels")
    stored_shape = input_shape
    if upscale > 1:
        if len(input_shape) < 2 or input_shape[-1] % upscale or input_shape[-2] % upscale:
            raise ModelError(f"input shape {input_shape} cannot be {upscale} times a stored image in height and width")
        stored_shape = (*input_shape[:-2], input_shape[-2] // upscale, input_shape[-1] // upscale)
    try:
        x = x.reshape((len(x), *stored_shape))
    except ValueError as exc:
        raise ModelError(f"{images}: images of shape {x.shape[1:]} do not fit input shape {stored_shape}") from exc
    if upscale > 1:
        x = x.repeat(upscale, axis=-2).repeat(upscale, axis=-1)
    return LabelledSet(inputs=np.ascontiguousarray(x), labels=y)
