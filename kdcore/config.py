"""TrainConfig: every setting of one distillation run, validated whole before anything runs."""

from __future__ import annotations

from typing import Any, Literal

import annotated_types
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from kdcore.errors import ConfigError


class TrainConfig(BaseModel):
    """Settings of one KD training run; the same fields a sweep searches or fixes."""

    # Floats must be finite: an inf lr or temperature trains garbage rather than failing.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # T is bounded so s/T and T^2 stay far from float32 overflow and underflow.
    temperature: float = Field(4.0, ge=0.05, le=100, description="Softmax temperature T of the distillation term.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the distillation term; 1 - alpha weighs cross-entropy.")
    ratio: float = Field(0.5, gt=0, le=1, description="Compression ratio: student width / teacher width.")
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate of AdamW.")
    epochs: int = Field(40, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(128, ge=1, description="Samples per optimizer step (before accumulation).")
    data_fraction: float = Field(1.0, gt=0, le=1, description="Fraction of the training split whose labels are used (stratified, nested).")
    transfer_ratio: float = Field(0.0, ge=0, le=16, description="Unlabelled inputs added per labelled input in each batch, seen only by the KD term (the transfer set: the task's unlabeled split plus the training inputs data_fraction leaves out); 0: none.")
    low_fidelity_epochs: int = Field(0, ge=0, description="The first this many epochs train on low_fidelity_fraction of the labelled subset, a cheap first look for a multi-fidelity search (kdsweep run --fidelity data); 0: every epoch uses all of it.")
    low_fidelity_fraction: float = Field(1.0, gt=0, le=1, description="Share of the labelled subset (stratified, nested) that the low-fidelity epochs train on.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_frac: float = Field(0.05, ge=0, lt=1, description="Fraction of all steps spent in linear warm-up before cosine decay.")
    grad_accum_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm; 0 disables clipping.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy term.")
    patience: int = Field(8, ge=0, description="Epochs without improvement before early stopping; 0 disables it.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change of the monitored metric that counts as improvement.")
    monitor: Literal["val_acc", "val_loss"] = Field("val_acc", description="Validation metric for early stopping and best weights.")
    seed: int = Field(0, ge=0, description="Seed of the weights' initialisation and the batch order (repeats vary it).")
    data_seed: int = Field(0, ge=0, description="Seed of the labelled data-fraction subset (fixed for a study, so every trial sees the same labels).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?|mps)$",
                        description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU.")
    num_workers: int = Field(0, ge=0, description="DataLoader workers, used only for tasks that hand over a non-tensor Dataset.")


def no_kd_twin(config: TrainConfig) -> TrainConfig:
    """The same run without distillation: alpha = 0 and no transfer set (unlabelled inputs teach
    nothing without a teacher); every other setting, the stopping rule and the data included, kept."""
    return config.model_copy(update={"alpha": 0.0, "transfer_ratio": 0.0})


def _allowed(field: pydantic.fields.FieldInfo) -> str:
    """Render a field's constraints as an interval such as '(0, 1]' or '> 0'."""
    low = high = None
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Gt):
            low = f"({rule.gt:g}"
        elif isinstance(rule, annotated_types.Ge):
            low = f"[{rule.ge:g}"
        elif isinstance(rule, annotated_types.Lt):
            high = f"{rule.lt:g})"
        elif isinstance(rule, annotated_types.Le):
            high = f"{rule.le:g}]"
    if low and high:
        return f"{low}, {high}"
    if low:
        return ("> " if low[0] == "(" else ">= ") + low[1:]
    if high:
        return ("< " if high[-1] == ")" else "<= ") + high[:-1]
    return str(field.annotation.__name__ if hasattr(field.annotation, "__name__") else field.annotation)


class _Shown:
    """A value as an error message shows it: its repr, cut in the middle past 80 characters, so a
    50 MB value gives a readable one-line message."""

    def __init__(self, value: Any) -> None:
        self.text = repr(value)

    def __repr__(self) -> str:
        return self.text if len(self.text) <= 80 else f"{self.text[:50]}...{self.text[-20:]}"


def describe_validation_error(model: type[BaseModel], error: pydantic.ValidationError) -> str:
    """One line naming each bad field, the value given and what is allowed."""
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "config"
        value = _Shown(item.get("input"))
        field = model.model_fields.get(str(item["loc"][0])) if item["loc"] else None
        if item["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            problems.append(f"unknown setting '{name}' (known: {known})")
        elif item["type"] == "missing":
            problems.append(f"missing setting '{name}'")
        elif item["type"] == "string_pattern_mismatch" and field is not None:
            problems.append(f"{name}={value!r} is invalid (allowed: {field.description.rstrip('.')})")
        elif item["type"] == "finite_number":
            allowed = _allowed(field) if field is not None and field.metadata else ""
            bounds = f" in {allowed}" if allowed.startswith(("[", "(")) else f" {allowed}" if allowed else ""
            problems.append(f"{name}={value!r} is invalid (allowed: a finite number{bounds})")
        elif field is not None and item["type"].startswith(("greater_than", "less_than")):
            problems.append(f"{name}={value!r} is out of range (allowed: {_allowed(field)})")
        else:
            problems.append(f"{name}={value!r} is invalid ({item['msg'][0].lower()}{item['msg'][1:]})")
    return "; ".join(problems)


def make_config(model: type[BaseModel] = TrainConfig, /, **values: Any) -> Any:
    """Build ``model`` from ``values``, raising ConfigError with a one-line message."""
    try:
        return model(**values)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(model, error)) from None
