"""The KD verdict: paired repeats of the best configuration with and without distillation, and a
95% paired-t interval for the gain: ``helps``, ``hurts``, ``no_difference`` or ``incomplete``.

``paired`` holds the maths (light: readers of a verdict import it); ``repeats`` trains and logs
the pairs (it imports torch and MLflow), so it is imported from its module.
"""

from sweeps.verdict.paired import (HELPS, HURTS, INCOMPLETE, NO_DIFFERENCE, VERDICTS, Interval, paired_interval,
                                   verdict_word)

__all__ = ["HELPS", "HURTS", "INCOMPLETE", "NO_DIFFERENCE", "VERDICTS", "Interval", "paired_interval", "verdict_word"]
