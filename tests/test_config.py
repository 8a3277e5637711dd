import pytest
import yaml

from config import PRESETS, Config, ConfigError, config_from_dict, dump_yaml, make_config, parse_cli


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_validates(preset):
    cfg = make_config(preset)
    assert cfg.preset == preset


def test_seed_defaults():
    cfg = Config()
    assert cfg.use_timestep_weighting is True
    assert (cfg.weight_min_snr, cfg.weight_max_snr) == (0.1, 10.0)
    assert cfg.output_scale_init == 0.5 and cfg.temporal_modulation_weight == 0.5
    assert cfg.residual_input is False
    assert cfg.num_timesteps == 50


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'max_step'.*did you mean 'max_steps'"):
        parse_cli(["--max_step", "5"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="'batch_size'.*expected int"):
        parse_cli(["--batch_size", "four"])
    with pytest.raises(ConfigError, match="'compile'.*not one of"):
        parse_cli(["--compile", "maybe"])


@pytest.mark.parametrize("overrides, key", [
    (dict(frame_size_px=30, patch_size_px=4), "frame_size_px"),
    (dict(zero_terminal_snr=True, prediction_type="eps"), "zero_terminal_snr"),
    (dict(num_frames=15, tubelet_frames=2), "num_frames"),
    (dict(final_norm="layer"), "final_norm"),
    (dict(keep_checkpoints=1), "keep_checkpoints"),
    (dict(model_size="XXL"), "model_size"),
    (dict(dataset="how2sign"), "data_root"),
    (dict(pixel_temporal_blend=True, prediction_type="x0"), "pixel_temporal_blend"),
    (dict(pixel_temporal_blend=True, prediction_type="edm", refine_channels=0), "pixel_temporal_blend"),
])
def test_impossible_combinations_rejected(overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_config("tiny", overrides)


def test_cli_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nlr: 0.002\nbatch_size: 8\n")
    cfg, dry = parse_cli(["--config", str(path), "--batch-size=2", "--dry-run", "--seed", "3"])
    assert dry and cfg.preset == "tiny" and cfg.lr == 0.002 and cfg.batch_size == 2 and cfg.seed == 3


def test_yaml_unknown_key_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*learning_rate"):
        parse_cli(["--config", str(path)])


def test_round_trip_through_dict_and_yaml():
    cfg = make_config("tiny", dict(seed=5, lr=3e-4))
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg



def test_saved_config_without_a_newer_key_keeps_the_old_behaviour():
    """A checkpoint written before `pose_cond` existed rebuilds without the pose stage, although
    the `cpu` preset now turns it on."""
    saved = make_config("cpu").to_dict()
    del saved["pose_cond"]
    assert make_config("cpu").pose_cond is True and config_from_dict(saved).pose_cond is False
    saved = make_config("cpu").to_dict()
    del saved["pose_skeleton"]  # written while the hand-centre stage was the only one
    assert make_config("cpu").pose_skeleton == "full" and config_from_dict(saved).pose_skeleton == "hands"
    saved = make_config("cpu").to_dict()
    del saved["pixel_norm_over_clip"]  # written while the pixel path normalised each frame alone
    assert make_config("cpu").pixel_norm_over_clip is True and config_from_dict(saved).pixel_norm_over_clip is False
    saved = make_config("cpu").to_dict()
    del saved["pixel_temporal_blend"]  # written before the blend existed: its model has no gate channel
    assert make_config("cpu").pixel_temporal_blend is True and config_from_dict(saved).pixel_temporal_blend is False
    saved = make_config("cpu").to_dict()
    del saved["pose_depth"]  # written before the pose stage had layers over the frames
    assert make_config("cpu").pose_depth == 2 and config_from_dict(saved).pose_depth == 0
