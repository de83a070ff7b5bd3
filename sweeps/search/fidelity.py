"""Multi-fidelity search: what the pruner's first look at a trial costs.

- ``epochs`` (default): every epoch trains on all the labelled data, so a trial the pruner stops at
  its first rung (``--min-epochs``) has cost that many full epochs.
- ``data[:F]``: those first epochs train on a share F (default 0.3, seed 002's fast mode) of the
  labelled data, so a trial stopped there costs about F of that. The trials the pruner keeps go on
  with all of it, judged at later rungs by epochs as before: successive halving over data fraction
  x epochs. Every trial follows the same schedule, so the pruner compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdcore import ConfigError

KINDS = ("epochs", "data")
DEFAULT_SHARE = 0.3
_SETTINGS = ("low_fidelity_epochs", "low_fidelity_fraction")


@dataclass(frozen=True)
class Fidelity:
    kind: str = "epochs"
    share: float = 1.0  # of the labelled data, in the low-fidelity epochs

    @classmethod
    def parse(cls, text: str | None) -> Fidelity:
        """``epochs``, ``data`` or ``data:F`` with 0 < F < 1; ConfigError otherwise."""
        kind, _, share = (text or "epochs").strip().partition(":")
        if kind not in KINDS or (kind == "epochs" and share):
            raise ConfigError(f"--fidelity {text}: use epochs, data or data:F with F a share of the labelled data "
                              "in (0, 1), e.g. data:0.3")
        if kind == "epochs":
            return cls()
        try:
            value = float(share) if share else DEFAULT_SHARE
        except ValueError:
            value = float("nan")
        if not 0 < value < 1:
            raise ConfigError(f"--fidelity {text}: the share of the labelled data must be in (0, 1), e.g. data:0.3")
        return cls("data", value)

    def describe(self) -> str:
        return self.kind if self.kind == "epochs" else f"data:{self.share:g}"

    def flags(self, min_epochs: int, default_min_epochs: int) -> list[str]:
        """The ``kdsweep run`` options that give this fidelity (its low-fidelity epochs are
        ``--min-epochs``): a resume must repeat them."""
        if self.kind == "epochs":
            return []
        return ["--fidelity", self.describe(), *(["--min-epochs", str(min_epochs)] if min_epochs != default_min_epochs else [])]

    def settings(self, min_epochs: int) -> dict[str, Any]:
        """The trainer settings that make every trial's first ``min_epochs`` epochs low-fidelity."""
        if self.kind == "epochs":
            return {}
        return {"low_fidelity_epochs": min_epochs, "low_fidelity_fraction": self.share}

    def check(self, pruner: str, min_epochs: int, max_epochs: int, fixed: dict[str, Any]) -> None:
        """ConfigError unless a pruner can stop trials after their low-fidelity epochs."""
        if self.kind == "epochs":
            return
        if pruner == "none":
            raise ConfigError(f"--fidelity {self.describe()} needs a pruner to stop the trials that look poor after "
                              "their low-fidelity epochs, and this search prunes nothing (--pruner none, or "
                              "--objective pareto): use --pruner median or hyperband, or --fidelity epochs")
        if min_epochs >= max_epochs:
            raise ConfigError(f"--fidelity {self.describe()} with min_epochs={min_epochs} and {max_epochs} epochs leaves "
                              "no epoch on all the data: lower --min-epochs or raise epochs")
        given = [name for name in _SETTINGS if name in fixed]
        if given:
            raise ConfigError(f"--fidelity {self.describe()} sets {' and '.join(_SETTINGS)} itself; remove "
                              f"{', '.join(given)} from the sweep file's train: settings")
