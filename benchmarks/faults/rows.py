"""Every fault-matrix row, registered in order: importing this module fills
``registry.ROWS``, the moves' rows first, then the API's."""

from __future__ import annotations

import importlib

from registry import ROWS, Row

for _module in ("rows_moves", "rows_api"):  # in the table's order
    importlib.import_module(_module)

__all__ = ["ROWS", "Row"]
