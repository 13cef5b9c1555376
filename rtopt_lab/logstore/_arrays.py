"""Small Arrow-to-numpy helpers shared by the row checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _np(col: pa.Array | pa.ChunkedArray, fill: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(col, fill).to_numpy(zero_copy_only=False))


def _nulls(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if col.null_count == 0:
        return np.zeros(len(col), dtype=bool)
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False))
