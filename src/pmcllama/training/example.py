"""The unit of training data: one sequence of token ids with its labels (and, packed, its segments).

Below every data feed (training/data.py), packing (training/packing.py) and the flattened
attention (training/varlen.py), which all build or read it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100  # the label of a token without a loss (cross-entropy ignore_index)


@dataclass
class Example:
    input_ids: np.ndarray  # int64
    labels: np.ndarray  # int64, IGNORE where no loss
    source: str = ""
    position_ids: np.ndarray | None = None  # restarts at 0 at each packed segment (training/packing.py)
    sources: dict[str, int] | None = None  # tokens per source of a packed row

    def tokens_by_source(self) -> dict[str, int]:
        return dict(self.sources) if self.sources else {self.source or "all": len(self.input_ids)}
