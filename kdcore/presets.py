"""Named starting points, translated from the seed teams' hand-tuned settings.

Seed 001's five presets (teacher width 256 -> student 88-154: ratios 0.35-0.6) and seed 002's
fast/full modes, expressed in TrainConfig fields. ``kdsweep train --preset NAME`` starts from
one; ``kdsweep run --enqueue-presets`` puts them first in a study so the sampler starts from
known-good points.
"""

from __future__ import annotations

from typing import Any

from kdcore.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # Seed 001: "verify the code quickly": 3 epochs on a 10% subset.
    "quick": dict(epochs=3, batch_size=64, lr=2e-3, ratio=0.6, temperature=4.0, alpha=0.7, data_fraction=0.1),
    # Seed 001: low lr, small batches, soft targets weighted high: stable first attempts.
    "conservative": dict(epochs=30, batch_size=16, lr=5e-4, ratio=0.6, temperature=4.0, alpha=0.8),
    # Seed 001's recommended default.
    "balanced": dict(epochs=50, batch_size=32, lr=1e-3, ratio=0.5, temperature=3.5, alpha=0.75,
                     grad_accum_steps=2),
    # Seed 001: the smallest student, the softest targets.
    "aggressive": dict(epochs=80, batch_size=24, lr=8e-4, ratio=0.35, temperature=5.0, alpha=0.85,
                       grad_accum_steps=3),
    # Seed 001: long, low-lr training with stronger regularisation.
    "quality": dict(epochs=100, batch_size=16, lr=3e-4, ratio=0.55, temperature=4.5, alpha=0.8,
                    grad_accum_steps=4, weight_decay=0.02),
    # Seed 002's fast mode: 30% data, half the epochs, double batch, patience 2 with a min_delta.
    "fast": dict(epochs=20, batch_size=256, data_fraction=0.3, patience=2, min_delta=1e-3),
    # Seed 002's full mode: all data, patience 5, full precision (seed 002 turns AMP on in fast mode only).
    "full": dict(epochs=40, batch_size=128, data_fraction=1.0, patience=5, amp=False),
}


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name``; ConfigError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name])
