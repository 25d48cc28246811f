"""Series from a CSV file for the client and ``convlstm-predict --csv``: the named
columns, in file order, as numbers, with the row and column of the first cell that is
not one. The standard library's csv module, so the client needs no pandas."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


class CsvError(ValueError):
    """The file, a column or a cell cannot be used; the message says which."""


def read_columns(path: Path, columns: list[str]) -> NDArray[np.float64]:
    """(T,) for one column, (T, len(columns)) for several; a header row names them."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise CsvError(f"{path}: no column {missing}; it has {header}")
            rows = []
            for line, record in enumerate(reader, start=2):
                row = []
                for column in columns:
                    row.append(_number(record.get(column), f"{path}:{line} column {column!r}"))
                rows.append(row)
    except OSError as err:
        raise CsvError(f"{path}: cannot read it ({err.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise CsvError(f"{path}: not a CSV text file ({err})") from None
    if not rows:
        raise CsvError(f"{path}: no rows under the header")
    values = np.asarray(rows, np.float64)
    return values[:, 0] if len(columns) == 1 else values


def _number(cell: str | None, where: str) -> float:
    text = (cell or "").strip()
    if not text:
        raise CsvError(f"{where}: empty; fill missing values (interpolate) before forecasting")
    try:
        value = float(text)
    except ValueError:
        raise CsvError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise CsvError(f"{where}: {text!r} is not a finite number")
    return value
