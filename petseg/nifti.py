"""NIfTI files, checked in their own bytes before ITK reads them: ITK turns NaN into 0, reads a
truncated .nii.gz without complaint, settles a pixdim/sform conflict or a NaN quaternion
silently (a warning on a stream nobody reads), and cannot read NIfTI-2 at all."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from petseg.errors import InputError
from petseg.imagefiles import CHUNK, unreadable

_SIZES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
_SIZES |= {1536: 16, 1792: 16, 2048: 32, 2304: 4}
_FLOATS = {16: np.float32, 64: np.float64}
MAX_VOX_OFFSET = 1 << 30  # extensions of more than 1 GiB are not a header


def _header(head: bytes, path: Path) -> dict | None:
    """The fields petseg checks of a NIfTI-1 header (None: not NIfTI-1, or a header/image pair)."""
    order = next((o for o in "<>" if len(head) >= 4 and struct.unpack(o + "i", head[:4])[0] in (348, 540)), None)
    if order is None:
        return None
    if struct.unpack(order + "i", head[:4])[0] == 540:
        raise InputError(path, "is a NIfTI-2 file, which ITK does not read: save it as NIfTI-1 (e.g. with nibabel)")
    if len(head) < 348 or head[344:347] != b"n+1":
        return None

    def values(fmt: str, at: int) -> tuple:
        return struct.unpack(order + fmt, head[at : at + struct.calcsize(order + fmt)])

    return {
        "order": order,
        "dims": values("8h", 40),
        "datatype": values("h", 70)[0],
        "pixdim": values("8f", 76),
        "offset": values("f", 108)[0],
        "qform_code": values("h", 252)[0],
        "sform_code": values("h", 254)[0],
        "quatern": values("6f", 256),  # b, c, d, qoffset x, y, z
        "srow": np.asarray(values("12f", 280), float).reshape(3, 4),
    }


def _check_geometry(path: Path, header: dict) -> None:
    """pixdim must be the voxel size, the qform and sform finite, and the sform agree with
    pixdim: otherwise ITK takes one or the other, or drops a rotation, without an error."""
    pixdim = np.asarray(header["pixdim"][1:4], float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(path, f"corrupt NIfTI header: pixdim {tuple(pixdim.tolist())} is not a positive voxel size")
    if header["qform_code"] > 0:
        quatern = np.asarray(header["quatern"], float)
        if not np.all(np.isfinite(quatern)) or float(quatern[:3] @ quatern[:3]) > 1.0 + 1e-4:
            raise InputError(path, f"corrupt NIfTI header: qform quaternion/offset {tuple(quatern.tolist())}")
    if header["sform_code"] > 0:
        if not np.all(np.isfinite(header["srow"])):
            raise InputError(path, "corrupt NIfTI header: the sform holds NaN or infinite values")
        scales = np.linalg.norm(header["srow"][:, :3], axis=0)
        if not np.allclose(scales, pixdim, rtol=1e-2, atol=1e-4):
            raise InputError(
                path,
                f"corrupt NIfTI header: pixdim {tuple(np.round(pixdim, 4).tolist())} disagrees with the sform's "
                f"voxel size {tuple(np.round(scales, 4).tolist())}",
            )


def check_nifti_data(path: Path, *, role: str) -> None:
    """The header's geometry (above), then the voxel data: all there, from a sane
    ``vox_offset``, and finite (NaN or infinite voxels counted and refused)."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"  # by content: a plain NIfTI may be named .nii.gz
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as fh:
            header = _header(fh.read(352), path)
            if header is None or not 1 <= header["dims"][0] <= 7:
                return  # a header/image pair, or a header ITK refuses itself
            if header["dims"][0] >= 3:
                _check_geometry(path, header)
            offset, itemsize = header["offset"], _SIZES.get(header["datatype"])
            if itemsize is None:
                return
            # inside the header (0 by old writers) ITK reads from a byte that shifts every voxel
            if not math.isfinite(offset) or not 352 <= offset <= MAX_VOX_OFFSET or offset != int(offset):
                raise unreadable(path, f"vox_offset {offset:g} in its header")
            dims = header["dims"]
            count = int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64))
            floats = _FLOATS.get(header["datatype"])
            dtype = np.dtype(floats).newbyteorder(header["order"]) if floats else None
            fh.seek(int(offset))
            bad, left = 0, count * itemsize
            while left > 0:
                data = fh.read(min(left, CHUNK))
                if not data:
                    break
                left -= len(data)
                if dtype is not None:
                    values = np.frombuffer(data[: len(data) // itemsize * itemsize], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    except (OSError, EOFError, struct.error, zlib.error) as err:
        raise unreadable(path, str(err)) from None
    if left > 0:
        raise unreadable(path, f"{left} bytes of voxel data missing")
    if bad:
        raise InputError(path, f"{role} contains {bad} NaN or infinite voxels")
