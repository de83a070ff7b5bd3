"""How a value of a trials frame reads in a table (terminal or HTML): one rule per kind of column."""

from __future__ import annotations

import math
from typing import Any

_FOUR_DECIMALS = ("acc", "retention", "recall")
_COUNTS = ("epochs_run", "number", "best_trial", "kd_repeats")
_TWO_DECIMALS = ("_s",)


def cell(column: str, value: Any) -> str:
    """``value`` of ``column`` as short text: accuracies with 4 decimals, KD gains signed, seconds with 2
    (3 decimals under 1 s), integers whole, other floats with 4 significant digits; missing is empty."""
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return ""
        if value.is_integer() and ("params" in column or "bytes" in column or column in _COUNTS):
            return f"{int(value)}"
        if column.startswith("kd_gain"):  # the gain and its interval bounds
            return f"{value:+.4f}"
        if any(key in column for key in _FOUR_DECIMALS):
            return f"{value:.4f}"
        if column.endswith(_TWO_DECIMALS):
            return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


def plain(value: Any) -> Any:
    """``value`` as a plain JSON value: numpy scalars unwrapped, missing and NaN as None, times in ISO 8601."""
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def records(frame: Any) -> list[dict[str, Any]]:
    """The rows of a DataFrame as JSON-ready dicts (exact floats, unlike ``DataFrame.to_json``)."""
    columns = [str(c) for c in frame.columns]
    return [dict(zip(columns, map(plain, row))) for row in frame.itertuples(index=False, name=None)]
