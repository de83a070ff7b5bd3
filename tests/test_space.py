"""The search space: ``SearchSpace.parse`` turns a sweep file's ``space:`` into validated dimensions."""

from __future__ import annotations

import optuna
import pytest

from kdcore import ConfigError, TrainConfig
from sweeps.search.space import DEFAULT_SPACE, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def suggested(space: SearchSpace, n: int = 20, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# What a space may hold
# --------------------------------------------------------------------------------------------

def test_no_space_means_the_default_four_dimensions():
    space = SearchSpace.parse(None)
    assert set(space.dimensions) == set(DEFAULT_SPACE) == {"temperature", "alpha", "ratio", "lr"}
    assert space.dimensions["temperature"].log and space.dimensions["lr"].log
    assert not space.dimensions["alpha"].log
    assert space.fixed == {}


def test_a_range_of_a_float_field_is_a_float_range():
    dim = SearchSpace.parse({"temperature": {"low": 1, "high": 20, "log": True}}).dimensions["temperature"]
    assert (dim.kind, dim.low, dim.high, dim.log) == ("float", 1.0, 20.0, True)


def test_a_range_of_an_int_field_is_an_int_range():
    dim = SearchSpace.parse({"batch_size": {"low": 16, "high": 128, "step": 16}}).dimensions["batch_size"]
    assert (dim.kind, dim.low, dim.high, dim.step) == ("int", 16, 128, 16)


def test_a_list_is_a_choice():
    dim = SearchSpace.parse({"ratio": [0.25, 0.5, 1.0]}).dimensions["ratio"]
    assert dim.kind == "choice" and dim.choices == (0.25, 0.5, 1.0)


def test_a_scalar_is_a_fixed_setting_merged_with_the_train_settings():
    space = SearchSpace.parse({"alpha": {"low": 0, "high": 1}, "epochs": 8}, {"patience": 2})
    assert set(space.dimensions) == {"alpha"}
    assert space.fixed == {"epochs": 8, "patience": 2}


def test_config_of_a_trial_combines_fixed_and_searched_values():
    space = SearchSpace.parse({"alpha": {"low": 0, "high": 1}}, {"epochs": 8, "batch_size": 32})
    config = space.config({"alpha": 0.25})
    assert isinstance(config, TrainConfig)
    assert (config.alpha, config.epochs, config.batch_size) == (0.25, 8, 32)
    assert config.temperature == TrainConfig().temperature


def test_suggested_values_stay_inside_the_space_with_their_types():
    space = SearchSpace.parse({
        "temperature": {"low": 1, "high": 20, "log": True},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"low": 16, "high": 128, "step": 16},
        "epochs": {"low": 2, "high": 6},
        "ratio": [0.25, 0.5],
    })
    for params in suggested(space):
        assert 1 <= params["temperature"] <= 20 and 1e-4 <= params["lr"] <= 1e-2
        assert isinstance(params["batch_size"], int) and params["batch_size"] % 16 == 0
        assert isinstance(params["epochs"], int) and 2 <= params["epochs"] <= 6
        assert params["ratio"] in (0.25, 0.5)
        space.config(params)  # every suggestion is a valid trainer config


@pytest.mark.parametrize(("space", "fixed", "expected"), [
    ({"alpha": {"low": 0, "high": 1}}, {}, TrainConfig().epochs),
    ({"alpha": {"low": 0, "high": 1}}, {"epochs": 7}, 7),
    ({"epochs": {"low": 3, "high": 12}}, {}, 12),
    ({"epochs": [5, 9, 4]}, {}, 9),
])
def test_max_epochs_is_the_most_a_trial_may_run(space, fixed, expected):
    assert SearchSpace.parse(space, fixed).max_epochs() == expected


def test_grid_spreads_ranges_and_keeps_choices():
    space = SearchSpace.parse({"temperature": {"low": 1, "high": 8, "log": True}, "alpha": {"low": 0, "high": 1},
                               "batch_size": {"low": 32, "high": 128, "step": 32}, "ratio": [0.25, 0.5]})
    grid = space.grid(4)
    assert grid["temperature"] == pytest.approx([1, 2, 4, 8])
    assert grid["alpha"] == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-5)
    assert grid["batch_size"] == [32, 64, 96, 128]
    assert grid["ratio"] == [0.25, 0.5]


def test_describe_is_stable_text_for_resume_checks():
    space = SearchSpace.parse({"alpha": {"low": 0, "high": 1}, "ratio": [0.25, 0.5]}, {"epochs": 8})
    assert space.describe() == {"alpha": "float[0, 1]", "ratio": "choice[0.25, 0.5]", "epochs": "fixed 8"}


# --------------------------------------------------------------------------------------------
# What a space rejects, and how it says so
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("space", "fixed", "words"), [
    ({"temperature": {"low": 20, "high": 1}}, {}, ["temperature", "inverted", "low=20", "high=1"]),
    ({"epochs": {"low": 5, "high": 5}}, {}, ["epochs", "empty", "epochs: 5"]),
    ({"alpha": {"low": 0, "high": 1, "log": True}}, {}, ["alpha", "log", "above 0", "low=0"]),
    ({"lr": {"low": 0, "high": 0.01, "log": True}}, {}, ["lr=0", "out of range"]),
    ({"tempreature": {"low": 1, "high": 4}}, {}, ["unknown field 'tempreature'", "temperature"]),
    ({"alpha": {"low": 0, "high": 2}}, {}, ["alpha=2", "out of range", "[0, 1]"]),
    ({"batch_size": [0, 64]}, {}, ["batch_size=0", "out of range"]),
    ({"ratio": 1.5, "alpha": {"low": 0, "high": 1}}, {}, ["ratio=1.5", "out of range"]),
    ({"alpha": {"low": 0, "high": 1}}, {"data_fraction": 0}, ["data_fraction=0", "out of range"]),
    ({"alpha": {"low": 0, "high": 1}}, {"epochz": 3}, ["unknown setting 'epochz'"]),
    ({"alpha": {"high": 1}}, {}, ["alpha", "low and high"]),
    ({"alpha": {"low": 0, "high": 1, "lgo": True}}, {}, ["alpha", "lgo"]),
    ({"alpha": {"low": "a", "high": 1}}, {}, ["alpha", "numbers", "'a'"]),
    ({"lr": {"low": 1e-3, "high": float("inf")}}, {}, ["lr", "numbers"]),
    ({"batch_size": {"low": 8.5, "high": 64}}, {}, ["batch_size=8.5"]),
    ({"ratio": []}, {}, ["ratio", "empty"]),
    ({"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-3}}, {}, ["lr", "log", "step"]),
    ({"epochs": {"low": 2, "high": 5}}, {"epochs": 3}, ["epochs", "both searched and fixed"]),
    ({"epochs": 8}, {}, ["empty"]),
    ({}, {}, ["empty"]),
])
def test_invalid_space_raises_config_error_naming_the_problem(space, fixed, words):
    with pytest.raises(ConfigError) as raised:
        SearchSpace.parse(space, fixed)
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("space", [
    {"lr": {"low": 1e-3, "high": 1e-2, "step": 0}},
    {"batch_size": {"low": 8, "high": 64, "step": -8}},
    {"batch_size": {"low": 8, "high": 64, "step": 0.5}},
    {"lr": {"low": 1e-3, "high": 1e-2, "step": "a"}},
])
def test_a_step_must_be_a_positive_number_of_the_fields_type(space):
    # Unchecked, a bad step would pass parse() and then fail every trial in suggest().
    with pytest.raises(ConfigError, match="step"):
        SearchSpace.parse(space)
