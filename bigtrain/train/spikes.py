"""Loss spikes: `SpikeDetector` flags a loss whose robust z-score (distance from the median of the
last `window` losses, in units of their scaled median absolute deviation) exceeds `threshold`."""

from __future__ import annotations

import statistics
from collections import deque


class SpikeDetector:
    def __init__(self, window: int, threshold: float):
        self.losses: deque[float] = deque(maxlen=window)
        self.threshold = threshold

    def zscore(self, loss: float) -> float | None:
        """The robust z-score of `loss` against the window so far (None until it holds 8 losses);
        the loss then joins the window."""
        score = None
        if len(self.losses) >= 8:
            median = statistics.median(self.losses)
            mad = statistics.median(abs(x - median) for x in self.losses) * 1.4826
            score = (loss - median) / max(mad, 1e-8 * max(abs(median), 1.0))
        self.losses.append(loss)
        return score

    def is_spike(self, score: float | None) -> bool:
        return score is not None and score > self.threshold
