"""Recipes: shipped ones load, overrides are strict about keys and types."""

from __future__ import annotations

import pytest

from defectlite.errors import ConfigError
from defectlite.train.config import apply_overrides, list_recipes, load_recipe, model_overrides


def test_shipped_recipes_load():
    names = list_recipes()
    assert {"neu-kd-eg-repvgg", "neu-kd-eg-repvgg-fast"} <= set(names)
    paper = load_recipe("neu-kd-eg-repvgg")
    assert paper.teacher.model == "repvgg_a0" and paper.student.optim.epochs == 100
    assert paper.kd.temperature == 7.0 and paper.kd.alpha == 0.3
    assert paper.student.optim.lr == 0.1 and paper.student.optim.batch_size == 64


def test_overrides_are_typed_and_strict():
    cfg = load_recipe("neu-kd-eg-repvgg-fast", ["student.optim.epochs=3", "kd.alpha=0.5", "data.input_size=[64, 64]"])
    assert cfg.student.optim.epochs == 3 and cfg.kd.alpha == 0.5 and cfg.data.input_size == [64, 64]
    with pytest.raises(ConfigError, match="unknown config key 'student.optim.epoch'"):
        apply_overrides(cfg, ["student.optim.epoch=3"])
    with pytest.raises(ConfigError, match="student.optim.epochs: expected int"):
        apply_overrides(cfg, ["student.optim.epochs=many"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides(cfg, ["kd.alpha"])
    assert apply_overrides(cfg, ["teacher=null"]).teacher is None
    assert apply_overrides(cfg, ["student.optim.amp=off"]).student.optim.amp == "off"  # not YAML 1.1's False
    assert apply_overrides(cfg, ["student.augment.hflip=False"]).student.augment.hflip is False
    with pytest.raises(ConfigError, match="hflip"):
        apply_overrides(cfg, ["student.augment.hflip=no"])


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped recipes: .*neu-kd-eg-repvgg-fast"):
        load_recipe("no-such-recipe")


def test_model_option_sets_student_and_ensemble_members_but_not_the_teacher():
    ens = load_recipe("casting-ensemble-fast")
    assert ens.student.model == ens.ensemble.member.model == "weldnet"
    cfg = apply_overrides(ens, model_overrides(ens, "eg_repvgg"))
    assert cfg.student.model == cfg.ensemble.member.model == "eg_repvgg"
    # an explicit member model given after --model still wins
    cfg = apply_overrides(ens, [*model_overrides(ens, "eg_repvgg"), "ensemble.member.model=repvgg_tiny"])
    assert (cfg.student.model, cfg.ensemble.member.model) == ("eg_repvgg", "repvgg_tiny")
    kd = load_recipe("neu-kd-eg-repvgg-fast")
    assert kd.ensemble.member is None
    cfg = apply_overrides(kd, model_overrides(kd, "repvgg_tiny"))
    assert cfg.student.model == "repvgg_tiny" and cfg.teacher.model == kd.teacher.model
    with pytest.raises(ConfigError, match="student.model: expected str"):
        apply_overrides(kd, model_overrides(kd, "[1, 2]"))
