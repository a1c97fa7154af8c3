import pytest

from seq2seq.config import Config, ConfigError, config_from_dict, load_config
from seq2seq.options import parse_overrides


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.attention == "bahdanau"
    assert cfg.train.time_budget == 15.0


def test_overrides_are_typed():
    cfg = load_config(overrides=["train.lr=1e-3", "model.bidirectional=false", "data.max_train_pairs=100",
                                 "train.time_budget=null", "train.max_steps=10", "train.betas=[0.8, 0.9]"])
    assert cfg.train.lr == 1e-3 and cfg.model.bidirectional is False
    assert cfg.data.max_train_pairs == 100 and cfg.train.time_budget is None
    assert cfg.train.betas == (0.8, 0.9)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  attention: bahdanau\n  dec_hidden: 64\ntrain:\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=0.02"])
    assert cfg.model.attention == "bahdanau" and cfg.model.dec_hidden == 64 and cfg.train.lr == 0.02


@pytest.mark.parametrize("override, message", [
    (["train.lrr=1"], "unknown option 'train.lrr' (did you mean 'train.lr'?)"),
    (["model.attention=dot"], "model.attention='dot' is not one of"),
    (["model.dec_layers=two"], "model.dec_layers='two' is not a valid int"),
    (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["model.input_feeding=true", "model.attention=bahdanau"], "input_feeding applies to luong"),
    (["train.log_every=0"], "train.log_every must be at least 1"),
    (["train.sampling_k=0", "train.teacher_forcing=0.5"], "train.sampling_k must be positive"),
    (["train.sampling_schedule=linear"], "its floor, which is 1.0"),
    (["train.patience=0"], "train.patience must be at least 1"),
    (["data.max_train_pairs=0"], "data.max_train_pairs must be at least 1"),  # a limit of none is null
    (["train"], "not of the form"),
    (["model=3"], "'model' is a section"),
])
def test_bad_options_name_the_option(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    assert message in str(err.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict():
    cfg = load_config(overrides=["model.enc_cell=lstm", "search.beam=3"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again, Config)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("name", ["cho2014", "bahdanau2015", "luong2015", "caption_emoji", "show_and_tell"])
def test_shipped_configs_load_and_build(name):
    from pathlib import Path

    from seq2seq.models.model import build_captioning_model, build_translation_model

    cfg = load_config(Path(__file__).parent.parent / "experiments" / "configs" / f"{name}.yaml")
    if name.startswith(("caption", "show")):
        cfg.image.weights = "none"  # building must not need the network here
        model = build_captioning_model(cfg.model, cfg.image, 50)
    else:
        model = build_translation_model(cfg.model, 50, 60)
    assert model.num_parameters() > 0
    assert model.decoder.kind == cfg.model.attention


def test_luong_scores_are_scaled_by_default_but_not_in_runs_made_before_the_option():
    """The scale is the default for Luong's scores (an unscaled score collapses: results.md); a
    run saved before ``model.attention_scale`` existed computed them unscaled and loads so."""
    assert load_config(overrides=["model.attention=luong_general"]).model.attention_scale is True
    assert load_config(overrides=["model.attention=bahdanau"]).model.attention_scale is False  # it means nothing
    saved = load_config(overrides=["model.attention=luong_dot"]).to_dict()
    del saved["model"]["attention_scale"]
    assert config_from_dict(saved).model.attention_scale is False
    saved["model"]["attention_scale"] = True
    assert config_from_dict(saved).model.attention_scale is True
