"""The safe parse of the documents petseg reads, before their schemas (:mod:`petseg.schemas`).

:func:`read_json`: a regular file within a size cap, UTF-8, no NaN/Infinity, integers of
any length; :func:`convert` checks the plain values against a typed schema (``msgspec``:
types, ranges, known keys); :func:`read_table` reads a CSV with the columns it must have.
Each fails with one line naming the file, the key (or line and column) and the value.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import msgspec

from petseg.errors import InputError, PetsegError

MAX_JSON_BYTES = 10 * 1024 * 1024  # a clicks file or manifest line larger than this is not ours


def regular_file(path: str | Path, *, role: str, error: type[PetsegError] = InputError, max_bytes: int | None = None):
    """``path`` as a Path if it is a regular file (not a FIFO, device or folder, which could
    hang or flood a reader) within ``max_bytes``; else ``error`` naming it."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(path, f"{role} not found") from None
    except OSError as err:
        raise error(path, f"{role} cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(path, f"{role} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise error(path, f"{role}: not a regular file (a FIFO, socket or device)")
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(path, f"{role} is {info.st_size:,} bytes, more than the {max_bytes:,} a {role} may have")
    if not os.access(path, os.R_OK):
        raise error(path, f"{role} is not readable (permission denied)")
    return path


def _int(text: str) -> int | float:
    # Python refuses int() of more than 4300 digits; such a number is out of every range anyway
    return int(text) if len(text) <= 100 else float(text)


def _constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_text(text: str | bytes, *, source: str | Path, error: type[PetsegError] = InputError) -> Any:
    """Plain Python values from JSON text: NaN/Infinity refused, integers of any length read
    (as a float out of every range when huge), nesting bounded by Python's recursion limit."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise error(source, f"is not UTF-8 text (byte 0x{text[err.start]:02x} at offset {err.start})") from None
    try:
        return json.loads(text, parse_int=_int, parse_constant=_constant)
    except RecursionError:
        raise error(source, "JSON nested too deeply") from None
    except json.JSONDecodeError as err:
        raise error(source, f"cannot be parsed as JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except ValueError as err:
        raise error(source, f"cannot be parsed as JSON ({err})") from None


def read_json(
    path: str | Path, *, role: str, error: type[PetsegError] = InputError, max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """The JSON document in ``path`` as plain Python values (see :func:`parse_json_text`)."""
    path = regular_file(path, role=role, error=error, max_bytes=max_bytes)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(path, f"{role} cannot be read ({err.strerror})") from None
    return parse_json_text(data, source=path, error=error)


def convert(
    obj: Any,
    schema: Any,
    *,
    source: str | Path,
    error: type[PetsegError] = InputError,
    prefix: str = "",
    what: str = "",
    hint: str = "",
):
    """``obj`` checked against ``schema`` (a msgspec Struct or type); a mismatch is ``error``
    naming the document (``what``), the key (``prefix`` + its path), the value found there
    and, with ``hint``, what was expected."""
    try:
        return msgspec.convert(obj, type=schema, strict=True)
    except msgspec.ValidationError as err:
        key, problem = mismatch(err, obj, prefix=prefix)
        message = f"{key}: {problem}" if key else problem
        message = f"{what}: {message}" if what else message
        raise error(source, f"{message}; the format is {hint}" if hint else message) from None


_PATH = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def mismatch(err: msgspec.ValidationError, obj: Any, *, prefix: str = "") -> tuple[str, str]:
    """(key, "problem, got value") from msgspec's "Problem - at `$.key[0]`" about ``obj``."""
    problem, _, where = str(err).partition(" - at `")
    path = where.rstrip("`")
    key = prefix + path.removeprefix("$").lstrip(".")
    found = _value_at(obj, path)
    problem = (problem or "invalid").replace("`", "")
    if problem.startswith("Invalid enum value"):
        problem = "value not allowed"
    problem = re.sub(r"float [<>]= [-]?1e\+300", "a finite number", problem)
    if found is not _MISSING and not isinstance(found, dict | list):
        problem = problem.split(", got ")[0] + f", got {shown_value(found)}"
    return key, problem[0].lower() + problem[1:]


_MISSING = object()


def _value_at(obj: Any, path: str) -> Any:
    for name, index in _PATH.findall(path.removeprefix("$")):
        try:
            obj = obj[int(index)] if index else obj[name]
        except (KeyError, IndexError, TypeError, ValueError):
            return _MISSING
    return obj


def shown_value(value: Any, limit: int = 60) -> str:
    """A value for an error line: short, and a huge integer read as inf said as such."""
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "a number too large"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- CSV tables -------------------------------------------------------------------------------


def read_table(path: str | Path, *, role: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV (with or without BOM) that has at least ``columns``, every one of
    them filled; one line naming the file, the row and the column otherwise."""
    path = regular_file(path, role=role, max_bytes=MAX_JSON_BYTES)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            path, f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): save the {role} as UTF-8"
        ) from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(path, f"{role} needs the columns {','.join(columns)}; the header is {','.join(header)!r}")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise InputError(path, f"the header names column {twice[0]!r} twice")
        reader.fieldnames = header
        rows = []
        for row in reader:
            line = reader.line_num
            if not any((value or "").strip() for key, value in row.items() if key is not None):
                continue  # a blank line
            for column in columns:
                value = (row.get(column) or "").strip()
                if not value:
                    raise InputError(path, f"line {line}: column {column!r} is empty")
                if any(ord(ch) < 32 for ch in value):
                    raise InputError(path, f"line {line}: column {column!r} holds a control character")
            rows.append({c: row[c].strip() for c in columns})
        return rows
    except csv.Error as err:
        raise InputError(path, f"is not a CSV table (line {reader.line_num}: {err})") from None
