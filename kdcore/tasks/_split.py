"""Shared helper of the built-in tasks: turn numpy arrays into stratified tensor splits."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from kdcore.tasks.base import Splits


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


def carve_validation(x_train, y_train, x_test, y_test, *, val_size: float, seed: int = 0) -> Splits:
    """Hold a stratified ``val_size`` of the training data out as the validation split."""
    from sklearn.model_selection import train_test_split  # imported here: it takes ~1 s

    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=val_size, stratify=y_train, random_state=seed)
    return Splits(train=_tensors(x_fit, y_fit), val=_tensors(x_val, y_val), test=_tensors(x_test, y_test))
