"""YAML configs: packaged files, _base_ inheritance, --set overrides with types, helpful key errors."""

from __future__ import annotations

import pytest

from umop.engine.config import (ConfigError, apply_overrides, config_from_dict, list_packaged_configs, load_config,
                                resolve_config_path)

DETECTORS = ("retinanet", "atss", "fcos", "vfnet")


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("loss", ["focal", "pfl", "pfl_mean"])
def test_packaged_configs_follow_the_1x_recipe(detector, loss):
    config = load_config(f"{detector}_{loss}")
    assert (config.model.name, config.model.cls_loss) == (detector, loss)
    assert config.solver.epochs == 12 and config.solver.steps == [8, 11]
    assert config.solver.warmup_iters == 500 and config.solver.momentum == 0.9
    assert config.solver.weight_decay == pytest.approx(1e-4)
    assert config.batch_size == 16 and config.learning_rate == pytest.approx(0.01)
    assert (config.data.min_size, config.data.max_size) == (800, 1333)
    assert config.name == f"{detector}_{loss}" and config.output_dir == f"runs/{detector}_{loss}"
    if loss != "focal":
        assert config.model.cls_loss_options["delta"] == 0.5


def test_paths_and_bare_names_resolve_to_the_same_file():
    assert resolve_config_path("configs/atss_pfl.yaml") == resolve_config_path("atss_pfl")
    assert resolve_config_path("atss_pfl.yaml") == resolve_config_path("atss_pfl")
    assert "demo_synthetic" in list_packaged_configs()
    with pytest.raises(ConfigError, match="Did you mean atss_pfl"):
        resolve_config_path("atss_pflx")


def test_overrides_are_typed_and_scale_the_learning_rate():
    config = load_config("atss_pfl", ["batch_size=4", "data.min_size=[640, 800]", "solver.amp=false",
                                      "model.cls_loss_options.delta=0.25", "solver.steps=[16, 22]", "solver.grad_clip=35"])
    assert config.batch_size == 4 and config.learning_rate == pytest.approx(0.0025)  # 0.01 * 4 / 16
    assert config.data.min_size == [640, 800] and config.solver.amp is False
    assert config.model.cls_loss_options == {"gamma": 2.0, "delta": 0.25, "estimator": "official"}
    assert config.solver.steps == [16, 22] and config.solver.grad_clip == 35.0
    assert load_config("atss_pfl", ["solver.lr=0.02"]).learning_rate == 0.02


@pytest.mark.parametrize("override, nearest", [
    ("solver.lrr=0.1", "solver.lr"),
    ("sovler.lr=0.1", "solver.lr"),
    ("solver.warmup=100", "solver.warmup_iters"),
    ("batchsize=8", "batch_size"),
    ("data.train_annotations=x.json", "data.train_ann"),
])
def test_mistyped_keys_name_the_nearest_valid_key(override, nearest):
    with pytest.raises(ConfigError) as error:
        load_config("atss_pfl", [override])
    assert f"'{override.split('=')[0]}'" in str(error.value)
    assert f"did you mean '{nearest}'" in str(error.value)


@pytest.mark.parametrize("override, key", [("solver.lr=fast", "solver.lr"), ("batch_size=2.5", "batch_size"),
                                           ("solver.amp=maybe", "solver.amp"), ("data.min_size=[1, 2, 3]",
                                                                                  "data.min_size"),
                                           ("solver.optimizer=adam", "solver.optimizer")])
def test_mistyped_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("atss_pfl", [override])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: atss_pfl.yaml\nsolver: {epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'solver\.epochz'.*'solver\.epochs'"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(loop)


def test_inheritance_merges_sections(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_base_: retinanet_pfl\nsolver: {epochs: 24, steps: [16, 22]}\n"
                     "model: {cls_loss_options: {w: 0.5}, options: {score_thresh: 0.1}}\n")
    config = load_config(child)
    assert config.model.cls_loss == "pfl" and config.model.name == "retinanet"
    assert config.solver.epochs == 24 and config.solver.warmup_iters == 500  # untouched keys inherited
    assert config.model.cls_loss_options == {"gamma": 2.0, "delta": 0.5, "estimator": "official", "w": 0.5}
    assert config.model.options == {"score_thresh": 0.1}
    assert config.name == "child"


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["solver.lr"])
    assert config_from_dict(apply_overrides({}, ["name=my run"])).name == "my run"


@pytest.mark.parametrize("override, message", [
    # the example: a mistyped loss option given as a detector option
    ("model.options.detla=0.5", r"model\.options: unknown option 'detla'.*did you mean 'model\.cls_loss_options\.delta'"),
    ("model.options.scor_thresh=0.1", r"unknown option 'scor_thresh'.*did you mean 'score_thresh'"),
    ("model.cls_loss_options.detla=0.5", r"cls_loss: .*unknown option 'detla' for 'pfl'.*did you mean 'delta'"),
    ("model.cls_loss_options.delta=fast", r"cls_loss: .*option 'delta' of 'pfl' must be float"),
    ("model.cls_loss=pfll", r"unknown classification loss 'pfll'.*did you mean 'pfl'"),
    ("model.box_loss=gio", r"unknown box loss 'gio'.*did you mean 'giou'"),
    ("model.sampler=ohm", r"unknown sampler 'ohm'.*did you mean 'ohem'"),
    ("model.name=fcoss", r"unknown detector 'fcoss'.*did you mean 'fcos'"),
])
def test_model_options_are_checked_when_the_config_is_loaded(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("atss_pfl", [override])


def test_combinations_that_make_no_sense_fail_when_the_config_is_loaded():
    with pytest.raises(ConfigError, match=r"L1Loss.*fcos|fcos.*L1Loss"):
        load_config("fcos_pfl", ["model.box_loss=l1"])
    with pytest.raises(ConfigError, match="APLoss"):
        load_config("atss_focal", ["model.cls_loss=ap_loss", "model.sampler=ohem"])
    config = load_config("atss_focal", ["model.box_loss=diou", "model.sampler=ohem",
                                        "model.sampler_options.neg_pos_ratio=3"])
    assert (config.model.box_loss, config.model.sampler) == ("diou", "ohem")


def test_every_packaged_config_is_valid():
    for name in list_packaged_configs():
        load_config(name)  # the model section is checked against umop.models.build


def test_pfl_config_comments_give_the_formula_the_code_implements():
    from umop.engine.config import packaged_config_dir

    texts = {path.name: path.read_text() for path in packaged_config_dir().glob("*_pfl.yaml")}
    assert len(texts) >= 4
    for name, text in texts.items():
        assert "gamma + delta * (1" not in text, name
        if "level-wise resampling" in text:
            assert "clamp(raw, gamma - delta, gamma + delta)" in text and "alpha_ad = w / gamma_ad" in text, name


def test_the_model_section_lists_the_components_of_build_detector():
    from umop.engine.config import MODEL_COMPONENTS
    from umop.models.build import COMPONENTS

    assert MODEL_COMPONENTS == COMPONENTS
