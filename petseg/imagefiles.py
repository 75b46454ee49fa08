"""What ITK does not check in an image file, checked in the file's own bytes.

ITK's readers read a MetaImage or NRRD header's voxels from any path it names (outside the
input folder, a FIFO that never ends), take ``Offset = nan`` as 0, decompress corrupt data
without an error, turn NaN into 0 and read a truncated ``.nii.gz`` without complaint. So,
before ITK reads a file (:func:`check_header`) and after (:func:`check_nifti_data`):

- MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr): voxels only inline or in one regular file
  beside the header (no paths, lists or patterns); geometry fields finite numbers; compressed
  voxel data decompresses whole to exactly the size the header declares.
- NIfTI: the voxel data are all there (from a sane ``vox_offset``) and finite.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from petseg.errors import InputError
from petseg.layout import image_suffix

HEADER_BYTES = 1 << 16  # a text header longer than this is not one ITK wrote
CHUNK = 1 << 24

_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4}
_MET_SIZES |= {"MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}
_MET_SIZES |= {"MET_FLOAT": 4, "MET_DOUBLE": 8}
_MET_GEOMETRY = ("offset", "origin", "position", "elementspacing", "elementsize", "transformmatrix")
_MET_GEOMETRY += ("rotation", "orientation", "centerofrotation")
_NRRD_SIZES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8}
_NRRD_SIZES |= {"float": 4, "double": 8}
_NRRD_ALIASES = {"signed char": "int8", "uchar": "uint8", "unsigned char": "uint8", "short": "int16"}
_NRRD_ALIASES |= {"short int": "int16", "signed short": "int16", "ushort": "uint16", "unsigned short": "uint16"}
_NRRD_ALIASES |= {"int": "int32", "signed int": "int32", "uint": "uint32", "unsigned int": "uint32"}
_NRRD_ALIASES |= {"longlong": "int64", "long long": "int64", "ulonglong": "uint64", "unsigned long long": "uint64"}
_NRRD_GEOMETRY = ("space origin", "space directions", "spacings", "thicknesses", "axis mins", "axis maxs")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_header(path: Path) -> None:
    """Refuse a MetaImage/NRRD file whose header ITK would read wrongly or dangerously."""
    suffix = image_suffix(path).lower()
    if suffix in (".mha", ".mhd"):
        _check_metaimage(path)
    elif suffix in (".nrrd", ".nhdr"):
        _check_nrrd(path)


def _header_lines(path: Path, *, end: str) -> tuple[list[tuple[str, str]], int]:
    """(key, value) pairs of a text header and the byte offset where inline data begin.
    MetaImage headers end after the ElementDataFile line (``end`` = "elementdatafile"), NRRD
    headers at the first blank line (``end`` = "")."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    fields, offset = [], 0
    separator = "=" if end else ":"
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").strip()
        if not end and not line:
            return fields, offset
        key, found, value = line.partition(separator)
        if found:
            fields.append((key.strip().lower(), value.strip()))
            if end and key.strip().lower() == end:
                return fields, offset
    if not end and len(head) < HEADER_BYTES:
        return fields, offset  # a detached NRRD header ends with its file
    raise unreadable(path, "no complete header found")


def _finite(path: Path, key: str, value: str) -> None:
    tokens = [t for t in re.split(r"[\s,()]+", value) if t and t.lower() != "none"]
    for token in tokens:
        if not _NUMBER.fullmatch(token) or not math.isfinite(float(token)):
            raise InputError(path, f"header field {key!r} holds {value[:80]!r}: expected finite numbers")


def _data_file(path: Path, value: str) -> Path | None:
    """The file a header names for its voxels (None: they follow the header inline)."""
    if value.upper() in ("LOCAL", ""):
        return None
    if value.upper().startswith("LIST") or "%" in value or " " in value.strip():
        problem = "a list or pattern of files, which petseg does not read (write one .mha or .nrrd)"
    elif os.path.isabs(value) or "/" in value or "\\" in value or value in (".", ".."):
        problem = "outside the header's folder"
    else:
        target = path.parent / value
        if not target.exists():
            problem = "not found beside the header"
        elif target.resolve().parent != path.parent.resolve():
            problem = "a link to a file outside the header's folder"
        elif not target.is_file():
            problem = "not a regular file"
        else:
            return target
    raise InputError(
        path,
        f"the header's voxel data file {value[:80]!r} is {problem}; expected data inline or in a regular file "
        "beside the header",
    )


def _check_metaimage(path: Path) -> None:
    fields, offset = _header_lines(path, end="elementdatafile")
    header = dict(fields)
    for key in _MET_GEOMETRY:
        if key in header:
            _finite(path, key, header[key])
    data = _data_file(path, header["elementdatafile"])
    if header.get("compresseddata", "false").lower() != "true":
        return
    try:
        sizes = [int(v) for v in header.get("dimsize", "").split()]
        channels = int(header.get("elementnumberofchannels", "1"))
    except ValueError:
        raise InputError(path, f"header field 'DimSize' holds {header.get('dimsize')!r}: expected integers") from None
    item = _MET_SIZES.get(header.get("elementtype", "").upper())
    expected = None if item is None or not sizes else math.prod(sizes) * channels * item
    limit = header.get("compresseddatasize")
    _check_stream(
        path,
        data or path,
        start=0 if data else offset,
        limit=int(limit) if limit and limit.isdigit() else None,
        expected=expected,
        wbits=zlib.MAX_WBITS,
    )


def _check_nrrd(path: Path) -> None:
    fields, offset = _header_lines(path, end="")
    header = {key.replace("datafile", "data file"): value for key, value in fields}
    for key in _NRRD_GEOMETRY:
        if key in header:
            _finite(path, key, header[key])
    data = _data_file(path, header.get("data file", ""))
    if header.get("encoding", "raw").lower() not in ("gzip", "gz"):
        return
    kind = header.get("type", "").lower()
    item = _NRRD_SIZES.get(_NRRD_ALIASES.get(kind, kind))
    try:
        sizes = [int(v) for v in header.get("sizes", "").split()]
    except ValueError:
        raise InputError(path, f"header field 'sizes' holds {header.get('sizes')!r}: expected integers") from None
    expected = None if item is None or not sizes else math.prod(sizes) * item
    _check_stream(path, data or path, start=0 if data else offset, limit=None, expected=expected, wbits=31)


def _check_stream(path: Path, source: Path, *, start: int, limit: int | None, expected: int | None, wbits: int):
    """Decompress ``source`` from ``start`` (at most ``limit`` bytes, as ITK will): the stream
    must be intact and give ``expected`` bytes, or ITK fills the image with garbage."""
    inflate = zlib.decompressobj(wbits)
    produced = 0
    try:
        with open(source, "rb") as fh:
            fh.seek(start)
            left = limit
            while not inflate.eof:
                block = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not block:
                    break
                if left is not None:
                    left -= len(block)
                produced += len(inflate.decompress(block, CHUNK))
                while inflate.unconsumed_tail and not inflate.eof:
                    produced += len(inflate.decompress(inflate.unconsumed_tail, CHUNK))
    except zlib.error as err:
        raise unreadable(path, f"its compressed voxel data are corrupt ({err})") from None
    if not inflate.eof:
        raise unreadable(path, "its compressed voxel data are truncated")
    if expected is not None and produced != expected:
        raise unreadable(path, f"voxel data of {produced:,} bytes where the header declares {expected:,}")


def unreadable(path: Path, detail: str) -> InputError:
    """The one wording of a file that does not hold the image its header describes."""
    return InputError(path, f"cannot be read as an image (truncated, corrupt or not an image file: {detail})")


# --- NIfTI ------------------------------------------------------------------------------------

_NIFTI_SIZES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
_NIFTI_SIZES |= {1536: 16, 1792: 16, 2048: 32, 2304: 4}
_NIFTI_FLOATS = {16: np.float32, 64: np.float64}


def _nifti_header(head: bytes) -> dict | None:
    """The fields petseg checks of a NIfTI-1 or NIfTI-2 header (None: not NIfTI)."""
    order = next((o for o in "<>" if len(head) >= 4 and struct.unpack(o + "i", head[:4])[0] in (348, 540)), None)
    if order is None or len(head) < 348:
        return None
    if struct.unpack(order + "i", head[:4])[0] == 348:
        f, ints, layout = "f", "h", {"dims": 40, "datatype": 70, "pixdim": 76, "offset": 108, "sform_code": 254}
        layout |= {"srow": 280, "single": head[344:347] == b"n+1", "minimum": 352}
        dims = struct.unpack(order + "8h", head[40:56])
    elif len(head) >= 540:
        f, ints, layout = "d", "i", {"dims": 16, "datatype": 12, "pixdim": 104, "offset": 168, "sform_code": 348}
        layout |= {"srow": 400, "single": head[4:7] == b"n+2", "minimum": 544}
        dims = struct.unpack(order + "8q", head[16:80])
    else:
        return None
    size = struct.calcsize(f)
    pixdim = struct.unpack(order + "8" + f, head[layout["pixdim"] : layout["pixdim"] + 8 * size])
    srow = struct.unpack(order + "12" + f, head[layout["srow"] : layout["srow"] + 12 * size])
    return {
        "order": order,
        "dims": dims,
        "datatype": struct.unpack(order + "h", head[layout["datatype"] : layout["datatype"] + 2])[0],
        "pixdim": pixdim,
        "offset": struct.unpack(order + f, head[layout["offset"] : layout["offset"] + size])[0],
        "sform_code": struct.unpack(
            order + ints, head[layout["sform_code"] : layout["sform_code"] + struct.calcsize(ints)]
        )[0],
        "srow": np.asarray(srow, float).reshape(3, 4),
        "single": layout["single"],
        "minimum": layout["minimum"],
    }


def _check_nifti_spacing(path: Path, header: dict) -> None:
    """pixdim must be the voxel size, and agree with the sform where there is one: ITK warns
    (on a stream nobody reads) and then takes one or the other."""
    pixdim = np.asarray(header["pixdim"][1:4], float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(path, f"corrupt NIfTI header: pixdim {tuple(pixdim.tolist())} is not a positive voxel size")
    if header["sform_code"] > 0:
        scales = np.linalg.norm(header["srow"][:, :3], axis=0)
        if not np.all(np.isfinite(header["srow"])) or not np.allclose(scales, pixdim, rtol=1e-2, atol=1e-4):
            raise InputError(
                path,
                f"corrupt NIfTI header: pixdim {tuple(np.round(pixdim, 4).tolist())} disagrees with the sform's "
                f"voxel size {tuple(np.round(scales, 4).tolist())}",
            )


def check_nifti_data(path: Path, *, role: str) -> None:
    """Read a NIfTI file's header and raw voxel data once more: ITK's reader turns NaN into 0,
    reads a truncated .nii.gz without complaint and settles a pixdim/sform conflict silently,
    so these are checked in the file's own bytes."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"  # by content: a plain NIfTI may be named .nii.gz
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as fh:
            header = _nifti_header(fh.read(544))
            if header is None or not header["single"] or not 1 <= header["dims"][0] <= 7:
                return  # a header/image pair, or a header ITK refuses itself
            if header["dims"][0] >= 3:
                _check_nifti_spacing(path, header)
            offset, itemsize = header["offset"], _NIFTI_SIZES.get(header["datatype"])
            if itemsize is None:
                return
            if not math.isfinite(offset) or offset < header["minimum"] or offset != int(offset):
                raise unreadable(path, f"vox_offset {offset:g} in its header")
            dims = header["dims"]
            count = int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64))
            floats = _NIFTI_FLOATS.get(header["datatype"])
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
