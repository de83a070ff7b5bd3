"""How long one pair of the KD verdict takes: estimated from the chosen trial before the pairs
start, then measured by the pairs themselves (under the machine's load at that moment).

A sweep keeps K pairs' time at the end of its budget for the verdict, and the verdict starts a
pair only if the estimate fits in the time left, so the verdict never starts what cannot finish.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

# The no-KD twin trains the same student on the same labelled batches, without the transfer set's
# unlabelled inputs. A step's cost is not proportional to its inputs: a small model's step is
# mostly fixed overhead. Measured on MNIST-1D's CNN students (batch 32 + 4 x 32 unlabelled inputs,
# one thread), the twin took 0.42 to 0.55 of its distilled arm: a fixed cost worth about two
# labelled batches per step fits that, and leaves the share at 1 without a transfer set.
_STEP_OVERHEAD = 2.0


def twin_share(transfer_ratio: float) -> float:
    """The no-KD twin's training time as a share of its distilled arm's."""
    return (1.0 + _STEP_OVERHEAD) / (1.0 + transfer_ratio + _STEP_OVERHEAD)


@dataclass
class PairTime:
    """Seconds one pair takes: ``estimate_s`` from a trial until pairs are measured, then from them."""

    estimate_s: float
    measured_s: list[float] = field(default_factory=list)

    @classmethod
    def from_trial(cls, train_s: float, overhead_s: float, transfer_ratio: float, epochs_run: int | None = None,
                   max_epochs: int | None = None) -> PairTime:
        """From a trial of the configuration: ``train_s`` of training over ``epochs_run`` of at most
        ``max_epochs`` epochs, ``overhead_s`` per run (its MLflow run, test pass and upload).

        Other seeds stop at other epochs. After a trial that ran all its epochs, the arms took 0.72 to
        1.09 of its time (0.72 beside two CPU burners, where a trial runs slower beside the sweep's own
        bookkeeping than a repeat does). After one that stopped early at epoch e, they ran past it
        (e = 46 of 60: 47 to 57 epochs), so its arm is counted halfway from e to the maximum. A
        pair that runs long costs the verdict only its last pair, which the check before each pair
        catches, so this is the expected time, not the longest possible."""
        if epochs_run and max_epochs and epochs_run < max_epochs:
            train_s *= (epochs_run + max_epochs) / (2 * epochs_run)
        return cls(train_s * (1.0 + twin_share(transfer_ratio)) + 2.0 * overhead_s)

    def add(self, seconds: float) -> None:
        """A pair just ran in ``seconds``: from now on the estimate is the pairs' own time."""
        self.measured_s.append(seconds)

    @property
    def seconds(self) -> float:
        if not self.measured_s:
            return self.estimate_s
        # The mean of what ran, or the last pair if it was slower: the load may have just grown.
        return max(statistics.fmean(self.measured_s), self.measured_s[-1])

    def pairs_within(self, seconds: float) -> int:
        """How many more whole pairs fit in ``seconds``."""
        return max(0, math.floor(seconds / self.seconds)) if self.seconds > 0 else 0
