"""TrainConfig: every setting of one distillation run, validated whole before anything runs."""

from __future__ import annotations

from typing import Any, Literal

import annotated_types
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from kdcore.errors import ConfigError
from kdcore.schedule import ScheduleKind, scheduled


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
    monitor: Literal["val_acc", "val_loss"] = Field("val_acc", description="Validation metric for early stopping and best weights (val_acc: the task's score, accuracy or an embedding task's Recall@1).")
    seed: int = Field(0, ge=0, description="Seed of the weights' initialisation and the batch order (repeats vary it).")
    data_seed: int = Field(0, ge=0, description="Seed of the labelled data-fraction subset (fixed for a study, so every trial sees the same labels).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?|mps)$",
                        description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU.")
    num_workers: int = Field(0, ge=0, description="DataLoader workers, used only for tasks that hand over a non-tensor Dataset.")
    # Schedules (kdcore.schedule): temperature and alpha above are the first epoch's values.
    temperature_schedule: ScheduleKind = Field("constant", description="How T moves over the epochs: constant, linear or cosine (from temperature to temperature_end), or stages (temperature_stages).")
    temperature_end: float | None = Field(None, ge=0.05, le=100, description="T at the last epoch, for a linear or cosine temperature_schedule.")
    temperature_stages: tuple[tuple[float, float], ...] | None = Field(None, description="[[share of the epochs, T], ...] for a stages temperature_schedule; the shares sum to 1.")
    alpha_schedule: ScheduleKind = Field("constant", description="How alpha moves over the epochs: constant, linear or cosine (from alpha to alpha_end), or stages (alpha_stages).")
    alpha_end: float | None = Field(None, ge=0, le=1, description="alpha at the last epoch, for a linear or cosine alpha_schedule.")
    alpha_stages: tuple[tuple[float, float], ...] | None = Field(None, description="[[share of the epochs, alpha], ...] for a stages alpha_schedule; the shares sum to 1.")
    # Several teachers (seed 003): the first `teachers` of the task's (Task.teachers()), each cached.
    teachers: int = Field(1, ge=1, le=16, description="How many of the task's teachers (Task.teachers(), its own first) the KD target averages: the mean of their probabilities at T.")
    teacher_weights: tuple[float, ...] | None = Field(None, description="One weight >= 0 per teacher in the KD target (normalised); none: equal weights.")
    # Online distillation (seed 003): an exponential moving average of the student as a teacher.
    ema_decay: float = Field(0.0, ge=0, lt=1, description="Decay of an EMA-of-student teacher, updated after every optimizer step (seed 003: 0.999); 0: none.")
    ema_weight: float = Field(0.5, ge=0, le=1, description="Share of the EMA teacher in the KD target when ema_decay > 0, the fixed teacher having the rest; 1: online distillation alone.")
    # Embedding tasks (Task.kind "embedding", kdcore.embedding_loss): the KD term that alpha weighs
    # is embed_weight * direct + relational_weight * relational; classification tasks reject them.
    embed_loss: Literal["cosine", "mse"] = Field("cosine", description="Direct term between the student's (projected) and the teacher's embedding of each input: cosine (1 - cos) or mse (on raw vectors). Embedding tasks only.")
    embed_weight: float = Field(1.0, ge=0, le=100, description="Weight of the direct embedding term in the KD term. Embedding tasks only.")
    relational_weight: float = Field(1.0, ge=0, le=100, description="Weight of the relational term (KL between the softmax rows of in-batch cosine similarities) in the KD term. Embedding tasks only.")
    relational_temperature: float = Field(0.1, ge=0.01, le=10, description="Temperature of the relational term's softmax over cosine similarities (temperature is the logits' T of classification tasks). Embedding tasks only.")

    @pydantic.model_validator(mode="after")
    def _check_schedules(self, info: pydantic.ValidationInfo) -> TrainConfig:
        if (info.context or {}).get("one_setting"):  # check_setting: the field's own rules only
            return self
        weights = self.teacher_weights
        if weights is not None and (len(weights) != self.teachers or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"teacher_weights={list(weights)!r} is invalid (allowed: {self.teachers} weight(s) >= 0, "
                             f"one per teacher (teachers={self.teachers}), not all 0)")
        if self.embed_weight == 0 and self.relational_weight == 0:
            raise ValueError("embed_weight=0 and relational_weight=0 leave the embedding KD term empty (allowed: "
                             "either > 0; for no distillation set alpha: 0)")
        for name, low, high in (("temperature", 0.05, 100), ("alpha", 0, 1)):
            kind, end, stages = (getattr(self, f"{name}_{part}") for part in ("schedule", "end", "stages"))
            if kind in ("linear", "cosine") and end is None:
                raise ValueError(f"{name}_schedule={kind!r} needs {name}_end (the value at the last epoch)")
            if kind != "stages":
                continue
            if not stages:
                raise ValueError(f"{name}_schedule='stages' needs {name}_stages, e.g. [[0.33, ...], [0.33, ...], "
                                 "[0.34, ...]] (share of the epochs, value)")
            shares = [share for share, _ in stages]
            if any(not 0 < share <= 1 for share in shares) or abs(sum(shares) - 1) > 1e-6:
                raise ValueError(f"{name}_stages={[list(s) for s in stages]!r} is invalid (allowed: shares in "
                                 f"(0, 1] that sum to 1; these sum to {sum(shares):g})")
            if any(not low <= value <= high for _, value in stages):
                raise ValueError(f"{name}_stages={[list(s) for s in stages]!r} is out of range (allowed: "
                                 f"values in [{low:g}, {high:g}])")
        return self

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``, checked by every rule (ConfigError, one line). ``model_copy(update=)``
        checks nothing, so a value a user gave must come in through here: an lr of inf copied in
        trains a student at chance and reports it FINISHED."""
        return make_config(type(self), **{**self.model_dump(), **changes})

    def kd_weights(self, epoch: int) -> tuple[float, float]:
        """The (temperature, alpha) of ``epoch`` (1-based), following their schedules."""
        return (scheduled(self.temperature_schedule, self.temperature, self.temperature_end,
                          self.temperature_stages, epoch, self.epochs),
                scheduled(self.alpha_schedule, self.alpha, self.alpha_end, self.alpha_stages, epoch, self.epochs))

    def distills(self) -> bool:
        """True if some epoch's KD term has weight: alpha > 0 at any point of its schedule."""
        return any(self.kd_weights(epoch)[1] > 0 for epoch in range(1, self.epochs + 1))


# The settings only embedding tasks read (kdcore.embedding_loss); a classification run rejects them
# unless they keep their defaults.
EMBEDDING_SETTINGS = ("embed_loss", "embed_weight", "relational_weight", "relational_temperature")


def no_kd_twin(config: TrainConfig) -> TrainConfig:
    """The same run without distillation: alpha = 0 and no transfer set (unlabelled inputs teach
    nothing without a teacher); every other setting, the stopping rule and the data included, kept."""
    return config.model_copy(update={"alpha": 0.0, "alpha_schedule": "constant", "alpha_end": None,
                                     "alpha_stages": None, "ema_decay": 0.0, "transfer_ratio": 0.0})


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
        elif item["type"] == "value_error" and not item["loc"]:  # a rule across fields: its own message
            problems.append(item["msg"].removeprefix("Value error, "))
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


def check_setting(name: str, value: Any) -> None:
    """ConfigError unless ``value`` is a valid TrainConfig ``name`` by that field's own rules (type,
    range): a sweep checks each end of a range and each choice alone; the rules across fields (a
    linear schedule needs its end value) hold for each whole trial config."""
    try:
        TrainConfig.model_validate({name: value}, context={"one_setting": True})
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(TrainConfig, error)) from None


def make_config(model: type[BaseModel] = TrainConfig, /, **values: Any) -> Any:
    """Build ``model`` from ``values``, raising ConfigError with a one-line message."""
    try:
        return model(**values)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(model, error)) from None
