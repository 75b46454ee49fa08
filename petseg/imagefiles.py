"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) headers, checked before ITK reads them.

ITK's readers take a header's voxels from any file it names (outside the input folder, a FIFO
that never ends, /dev/zero), read ``Offset = nan`` as 0, let a short field swallow the next
line, and decompress corrupt or short data into garbage without an error. Here the header is
parsed as strictly as ITK reads it, and refused when ITK could read it otherwise than it says:

- a field given twice (also in another case: MetaIO's keys are case-sensitive, a look-alike
  would shadow the real one); geometry fields that are not the right count of finite numbers;
- voxels only inline (MetaImage ``LOCAL``; NRRD without ``data file``) or in one regular file
  beside the header (a link is followed only to the header's own real folder); no lists or
  file patterns;
- the voxel data are exactly the size the header declares: compressed data decompress whole,
  from exactly the bytes ITK reads, to that size.

NIfTI files are checked in :mod:`petseg.nifti`.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from pathlib import Path

from petseg.errors import InputError
from petseg.layout import image_suffix

HEADER_LIMIT = 16 << 20  # a text header longer than this is not an image header (Slicer's may be 100s of KiB)
CHUNK = 1 << 24

_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4}
_MET_SIZES |= {"MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}
_MET_SIZES |= {"MET_FLOAT": 4, "MET_DOUBLE": 8}
# field -> number of values, in powers of NDims (1: one per axis, 2: a matrix)
_MET_GEOMETRY = {"Offset": 1, "Origin": 1, "Position": 1, "ElementSpacing": 1, "ElementSize": 1}
_MET_GEOMETRY |= {"TransformMatrix": 2, "Rotation": 2, "Orientation": 2, "CenterOfRotation": 1}
_NRRD_SIZES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8}
_NRRD_SIZES |= {"float": 4, "double": 8}
_NRRD_ALIASES = {"signedchar": "int8", "uchar": "uint8", "unsignedchar": "uint8", "short": "int16"}
_NRRD_ALIASES |= {"shortint": "int16", "signedshort": "int16", "signedshortint": "int16", "ushort": "uint16"}
_NRRD_ALIASES |= {"unsignedshort": "uint16", "unsignedshortint": "uint16", "int": "int32", "signedint": "int32"}
_NRRD_ALIASES |= {"uint": "uint32", "unsignedint": "uint32", "longlong": "int64", "longlongint": "int64"}
_NRRD_ALIASES |= {"signedlonglong": "int64", "ulonglong": "uint64", "unsignedlonglong": "uint64"}
_NRRD_GEOMETRY = ("spaceorigin", "spacedirections", "spacings", "thicknesses", "axismins", "axismaxs")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def unreadable(path: Path, detail: str) -> InputError:
    """The one wording of a file that does not hold the image its header describes."""
    return InputError(path, f"cannot be read as an image (truncated, corrupt or not an image file: {detail})")


def check_header(path: Path) -> None:
    """Refuse a MetaImage/NRRD file whose header ITK would read wrongly or dangerously."""
    suffix = image_suffix(path).lower()
    if suffix in (".mha", ".mhd"):
        _check_metaimage(path)
    elif suffix in (".nrrd", ".nhdr"):
        _check_nrrd(path)


# --- parsing ------------------------------------------------------------------------------------


def _read_fields(path: Path, *, nrrd: bool) -> tuple[dict[str, str], int]:
    """Fields of a text header (MetaImage keys as written, NRRD keys lower-cased without
    spaces, Teem's spelling variants alike) and the offset where inline data begin."""
    fields: dict[str, str] = {}
    seen: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(iter(lambda: fh.readline(HEADER_LIMIT), b"")):
            offset += len(raw)
            if offset > HEADER_LIMIT:
                break
            line = raw.decode("latin-1").rstrip("\r\n")
            if nrrd:
                if number == 0 or line.startswith("#") or ":=" in line:
                    continue  # the magic line, comments, key/value pairs (not fields)
                if not line.strip():
                    return fields, offset
                key, found, value = line.partition(": ")
                key = key.strip().lower().replace(" ", "")
            else:
                key, found, value = line.partition("=")
                key = key.strip()
            if not found:
                continue
            folded = key.lower()
            if folded in seen:
                raise unreadable(path, f"header field {key!r} is given twice (as {seen[folded]!r} too)")
            seen[folded] = key
            fields[key] = value.strip()
            if not nrrd and key == "ElementDataFile":  # MetaIO stops reading the header here
                return fields, offset
    if nrrd and offset <= HEADER_LIMIT:
        return fields, offset  # a detached NRRD header ends with its file
    raise unreadable(path, "no complete header found")


def _numbers(path: Path, key: str, value: str, *, count: int | None = None) -> list[float]:
    tokens = [t for t in re.split(r"[\s,()]+", value) if t and t.lower() != "none"]
    if not all(_NUMBER.fullmatch(t) and math.isfinite(float(t)) for t in tokens) or (
        count is not None and len(tokens) != count
    ):
        expected = f"{count} finite numbers" if count is not None else "finite numbers"
        raise InputError(path, f"header field {key!r} holds {value[:80]!r}: expected {expected}")
    return [float(t) for t in tokens]


def _data_file(path: Path, name: str) -> Path:
    """The file beside the header that holds the voxels; anything else is refused."""
    value = name.strip()
    if value.upper().startswith("LIST") or "%" in value:
        problem = "a list or pattern of files, which petseg does not read (write one .mha or .nrrd)"
    else:
        normal = os.path.normpath(value) if value else ""
        if not normal or os.path.isabs(value) or os.sep in normal or "\\" in normal or normal in (".", ".."):
            problem = "outside the header's folder"
        else:
            target = path.parent / normal
            if not (target.exists() or target.is_symlink()):
                problem = "not found beside the header"
            elif target.resolve().parent != path.resolve().parent:
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


# --- MetaImage ----------------------------------------------------------------------------------


def _check_metaimage(path: Path) -> None:
    fields, offset = _read_fields(path, nrrd=False)
    if "ElementDataFile" not in fields:
        raise unreadable(path, "no ElementDataFile in its header")
    try:
        dims = int(fields.get("NDims", "3"))
        sizes = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        skip = int(fields.get("HeaderSize", "0"))
    except ValueError:
        raise InputError(path, "header fields NDims, DimSize, HeaderSize: expected integers") from None
    if len(sizes) != dims:
        raise InputError(path, f"header field 'DimSize' holds {fields.get('DimSize')!r}: expected {dims} integers")
    for key, power in _MET_GEOMETRY.items():
        if key in fields:
            _numbers(path, key, fields[key], count=dims**power)
    local = fields["ElementDataFile"] == "LOCAL"  # as MetaIO compares it: "local" names a file
    source, start = (path, offset) if local else (_data_file(path, fields["ElementDataFile"]), 0)
    item = _MET_SIZES.get(fields.get("ElementType", "").upper())
    expected = None if item is None else math.prod(sizes) * channels * item
    if fields.get("CompressedData", "False").lower() == "true":
        size = fields.get("CompressedDataSize", "")
        if not size.isdigit():  # ITK always writes it; without it MetaIO reads another amount than the file holds
            raise unreadable(path, "compressed voxel data without a CompressedDataSize")
        if skip:
            raise unreadable(path, "compressed voxel data with a HeaderSize")
        _check_stream(path, source, start=start, limit=int(size), expected=expected, wbits=zlib.MAX_WBITS)
    elif expected is not None:
        held = os.path.getsize(source) - start - max(skip, 0)
        if held != expected and not (skip == -1 and held >= expected):  # -1: the voxels are the last bytes
            raise unreadable(path, f"voxel data of {held:,} bytes where the header declares {expected:,}")


# --- NRRD ---------------------------------------------------------------------------------------


def _check_nrrd(path: Path) -> None:
    fields, offset = _read_fields(path, nrrd=True)
    for key in _NRRD_GEOMETRY:
        if key in fields:
            _numbers(path, key, fields[key])
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
        line_skip = int(fields.get("lineskip", "0"))
        byte_skip = int(fields.get("byteskip", "0"))
    except ValueError:
        raise InputError(path, "header fields sizes, line skip, byte skip: expected integers") from None
    if "datafile" in fields:
        source, start = _data_file(path, fields["datafile"]), 0
    else:
        source, start = path, offset
    kind = fields.get("type", "").lower().replace(" ", "")
    item = _NRRD_SIZES.get(_NRRD_ALIASES.get(kind, kind))
    expected = None if item is None or not sizes else math.prod(sizes) * item
    encoding = fields.get("encoding", "raw").lower()
    if line_skip:
        with open(source, "rb") as fh:
            fh.seek(start)
            for _ in range(line_skip):
                fh.readline()
            start = fh.tell()
    if encoding in ("gzip", "gz"):
        if expected is not None:
            expected = expected + byte_skip if byte_skip >= 0 else None
        _check_stream(path, source, start=start, limit=None, expected=expected, wbits=31, members=True)
    elif encoding == "raw" and expected is not None:
        held = os.path.getsize(source) - start - max(byte_skip, 0)
        if held != expected and not (byte_skip == -1 and held >= expected):
            raise unreadable(path, f"voxel data of {held:,} bytes where the header declares {expected:,}")


# --- compressed data ----------------------------------------------------------------------------


def _check_stream(
    path: Path,
    source: Path,
    *,
    start: int,
    limit: int | None,
    expected: int | None,
    wbits: int,
    members: bool = False,
) -> None:
    """Decompress ``source`` from ``start`` (at most ``limit`` bytes, as ITK reads them; with
    ``members``, gzip members one after another, as bgzip and ``cat a.gz b.gz`` write them):
    the data must be intact and give ``expected`` bytes, or ITK fills the image with garbage."""
    inflate, fed, produced, finished = zlib.decompressobj(wbits), False, 0, False
    try:
        for block in _blocks(source, start=start, limit=limit):
            while block:
                if inflate.eof:
                    if not members or not block.strip(b"\0"):
                        block = b""  # what follows the stream (zero padding) is not read as voxels
                        break
                    inflate, fed = zlib.decompressobj(wbits), False
                produced += len(inflate.decompress(block, CHUNK))
                fed, block = True, inflate.unconsumed_tail or (inflate.unused_data if inflate.eof else b"")
                finished = inflate.eof
                if expected is not None and produced > expected:
                    raise unreadable(path, f"voxel data of more bytes than the {expected:,} the header declares")
    except zlib.error as err:
        raise unreadable(path, f"its compressed voxel data are corrupt ({err})") from None
    if fed and not inflate.eof or not finished:
        raise unreadable(path, "its compressed voxel data are truncated")
    if expected is not None and produced != expected:
        raise unreadable(path, f"voxel data of {produced:,} bytes where the header declares {expected:,}")


def _blocks(source: Path, *, start: int, limit: int | None):
    with open(source, "rb") as fh:
        fh.seek(start)
        while limit is None or limit > 0:
            block = fh.read(CHUNK if limit is None else min(CHUNK, limit))
            if not block:
                return
            if limit is not None:
                limit -= len(block)
            yield block
