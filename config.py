"""One typed config for text2sign: defaults, named presets, YAML/CLI overrides, validation.

Every setting lives in `Config` with a one-line comment (unit, typical value). A run is described by
`preset` + optional `--config FILE.yaml` + `--key value` overrides, applied in that order. Unknown keys
and bad values fail before any work, naming the key and suggesting the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, fields
from typing import Any

import yaml

from data.synthetic import MIN_FRAME_SIZE_PX, MIN_FRAMES  # what the procedural signer can draw
from models.architectures.vivit import MODEL_SIZES  # the registry owns the valid sizes


class ConfigError(ValueError):
    """A bad key, value or combination in the configuration (the message names it)."""


@dataclass
class Config:
    """The shipped recipe: every default is what `python main.py` trains (the `cpu` preset is empty).

    Why each recipe value was chosen is in docs/experiments.md (the row numbers in the comments)."""

    # --- run ---------------------------------------------------------------------------------
    experiment_name: str = "default"  # run folder name under output_dir; same name again resumes
    output_dir: str = "experiments"  # parent folder of all run folders
    preset: str = "cpu"  # named preset these values started from (see PRESETS)
    seed: int = 0  # seeds data order, noise, init; same seed -> same run
    device: str = "auto"  # auto (cuda if present, else cpu) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast where the hardware has bf16 matrix units) | fp32 | bf16
    compile: str = "auto"  # auto | on | off: torch.compile (CPU: each block, CUDA: the model); auto: training.choose_compile
    num_threads: int = 0  # CPU intra-op threads; 0 = torch default (all cores)
    cpu_streams: int = 2  # CPU training: micro-batch slices run concurrently, 1 thread each (streams.py; row 25)

    # --- data --------------------------------------------------------------------------------
    dataset: str = "synthetic"  # synthetic | how2sign | phoenix | wlasl | folder
    data_root: str = ""  # dataset folder (unused for synthetic)
    num_frames: int = 16  # frames per clip
    frame_size_px: int = 32  # square frame side, pixels
    num_train_samples: int = 20000  # synthetic: clips in the train split (rendered on demand)
    num_eval_samples: int = 48  # synthetic: clips in each of val and test
    max_text_len_tokens: int = 24  # captions are truncated to this many tokens (words or subword pieces)
    tokenizer: str = "word"  # word (synthetic, glosses) | bpe: subword pieces for real sentences (data/text.py)
    subword_vocab_size: int = 4000  # bpe: most pieces learnt from the training captions (embedding rows)
    num_workers: int = 1  # DataLoader worker processes; one renders beside the step (performance.md, round 3)
    sample_fps: float = 0.0  # real data: resample clips to this frame rate; 0 = every frame
    text_field: str = "translation"  # phoenix: translation (German text) | orth (glosses)
    signer_disjoint: bool = False  # real data with signer ids: make splits signer-disjoint
    cache_dir: str = ""  # real data: preprocessed-clip cache; "" = <data_root>/.text2sign_cache
    max_bad_clip_fraction: float = 0.05  # stop when more than this share of clips fail to decode
    pose_dir: str = ""  # real data: folder searched (recursively) for {clip_id}.pose keypoints; "" = the dataset's own

    # --- model (ViViT denoiser) --------------------------------------------------------------
    model_size: str = "S"  # entry in models.architectures.vivit.MODEL_SIZES (width/depth/heads)
    patch_size_px: int = 8  # spatial patch side, pixels (frame_size_px must be divisible)
    tubelet_frames: int = 2  # frames per token (num_frames must be divisible; rows 13-17)
    mlp_ratio: float = 4.0  # transformer MLP hidden width / model width
    text_depth: int = 2  # layers of the text transformer
    frame_cond_depth: int = 2  # layers of the text -> per-frame adaLN decoder (FrameAligner); 0 = off (row 18)
    decoder_channels: int = 8  # channels of x_up, the pixel-space features before the final projection (row 13)
    refine_channels: int = 16  # channels of the full-resolution conv path beside the head; 0 = off (rows 42-45)
    refine_layers: int = 3  # 3x3 conv layers of that path
    pixel_norm_over_clip: bool = True  # the head's and refine path's norms take each clip's statistics, not each frame's (row 67)
    pixel_temporal_blend: bool = True  # the refine path gates each pixel toward its clip-mean estimate (EDM only; row 78)
    final_norm: str = "group"  # group | batch: normalization in the final projection (the original head used batch)
    output_scale_init: float = 0.5  # initial value of the learnable output_scale on the head's output
    temporal_modulation_weight: float = 0.5  # weight of the adaLN shift/scale from the timestep+text condition
    residual_input: bool = False  # the historical bug out = head(x_up) + x (evaluation/historical.py); diagnostics only
    activation_checkpointing: bool = False  # recompute block activations in backward (long clips)
    pose_cond: bool = True  # text -> keypoint stage whose rendered pose guides the denoiser (needs keypoints; row 29)
    pose_skeleton: str = "full"  # full (data/skeleton.py's points and limbs, arms drawn) | hands (two hand centres); rows 46, 52
    pose_depth: int = 2  # pose_cond: self-attention layers over the clip's frames in the pose stage; 0 = each frame alone (row 88)

    # --- diffusion ---------------------------------------------------------------------------
    num_timesteps: int = 50  # T, diffusion steps t = 0..T-1
    beta_schedule: str = "cosine"  # linear | cosine
    zero_terminal_snr: bool = False  # rescale so the last step is pure noise (needs v, x0 or edm)
    prediction_type: str = "edm"  # eps | v | x0 | edm: what the denoiser outputs (diffusion/gaussian.py; rows 41-43)
    sigma_data: float = 0.5  # edm: the data's standard deviation σ_d in c_skip/c_out/c_in (pixel std 0.44 here; rows 42-45)
    loss_weighting: str = "none"  # none (uniform in the target space) | snr_clamp | min_snr (row 2)
    use_timestep_weighting: bool = True  # historical switch: false forces uniform weights whatever loss_weighting
    weight_min_snr: float = 0.1  # snr_clamp lower clamp on SNR
    weight_max_snr: float = 10.0  # snr_clamp upper clamp on SNR
    min_snr_gamma: float = 5.0  # min_snr's gamma (Hang et al. 2023)
    motion_loss_weight: float = 0.0  # extra loss weight on pixels that move in the clean clip (rows 2, 36)
    temporal_diff_loss_weight: float = 4.0  # + this x the frame-to-frame change of the target-space error: flicker weighs 17x (rows 61-65)
    timestep_sampling_power: float = 0.0  # training t ~ (t+1)^power; 0 = uniform, > 0 favours high noise (rows 14, 45, 57)
    cond_drop_prob: float = 0.1  # training: probability of replacing the text by the null text
    pose_loss_weight: float = 10.0  # pose_cond: weight of the pose stage's keypoint loss (frame units²)
    guidance_scale: float = 1.0  # sampling: classifier-free guidance scale (1 = conditional only; row 29)
    sampler: str = "ddim"  # ddim | ddpm
    sampling_steps: int = 20  # DDIM steps (ddpm always uses num_timesteps; row 21)
    ddim_eta: float = 0.0  # DDIM stochasticity (0 = deterministic, 1 = DDPM-like)

    # --- optimisation ------------------------------------------------------------------------
    max_steps: int = 1000  # optimizer steps of the run (1000: the demo's targets in the old recipe's wall; rows 93)
    batch_size: int = 16  # clips per optimizer step (global, over all ranks and accumulation; row 37)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak AdamW learning rate
    pixel_lr_mult: float = 10.0  # LR multiple for the pixel path (head, refine, output_scale): its low-noise gains are large (row 56)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 100  # linear LR warm-up, steps
    weight_decay: float = 0.01  # AdamW weight decay (not on norms, biases, embeddings)
    adam_beta2: float = 0.99  # AdamW beta2
    grad_clip_norm: float = 1.0  # clip the global gradient norm to this
    ema_decay: float = 0.999  # EMA decay ceiling; warm-up min(decay, (1+s)/(10+s)) before it

    # --- logging, checkpoints, samples ---------------------------------------------------------
    log_every_steps: int = 25  # metrics.jsonl / TensorBoard interval
    sample_every_steps: int = 550  # GIF/MP4 samples of the fixed prompts from the EMA; 0 = end only
    checkpoint_every_steps: int = 275  # periodic checkpoint interval (also saved at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (>= 2, so a bad latest has a fallback)
    num_sample_prompts: int = 4  # fixed prompts sampled during training
    eval_at_end: bool = True  # run the sign-fidelity evaluation after training (synthetic data)
    tensorboard: bool = True  # also write TensorBoard scalars when tensorboard is installed

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
    "compile": ("auto", "on", "off"),
    "dataset": ("synthetic", "how2sign", "phoenix", "wlasl", "folder"),
    "text_field": ("translation", "orth"),
    "tokenizer": ("word", "bpe"),  # data.text.TOKENIZER_KINDS
    "final_norm": ("group", "batch"),
    "beta_schedule": ("linear", "cosine"),
    "prediction_type": ("eps", "v", "x0", "edm"),
    "loss_weighting": ("none", "snr_clamp", "min_snr"),
    "sampler": ("ddim", "ddpm"),
    "pose_skeleton": ("hands", "full"),
}

POSITIVE = (
    "num_frames", "frame_size_px", "num_train_samples", "num_eval_samples", "max_text_len_tokens",
    "patch_size_px", "tubelet_frames", "mlp_ratio", "text_depth", "decoder_channels", "num_timesteps",
    "sampling_steps", "max_steps", "batch_size", "grad_accum_steps", "lr", "log_every_steps",
    "checkpoint_every_steps", "num_sample_prompts", "weight_min_snr", "weight_max_snr",
    "min_snr_gamma", "cpu_streams", "sigma_data", "pixel_lr_mult", "grad_clip_norm", "subword_vocab_size", "refine_layers",
)
NON_NEGATIVE = (
    "num_threads", "num_workers", "sample_fps", "warmup_steps", "weight_decay", "refine_channels",
    "sample_every_steps", "motion_loss_weight", "temporal_diff_loss_weight",
    "timestep_sampling_power", "frame_cond_depth", "pose_depth",
    "min_lr_ratio", "ddim_eta", "pose_loss_weight", "max_bad_clip_fraction",
    "output_scale_init", "temporal_modulation_weight", "seed",
)
# [low, high) ranges of keys that are fractions or decay rates.
UNIT_INTERVAL = ("adam_beta2", "ema_decay", "cond_drop_prob")
# Seeds feed torch.manual_seed (64 bit) after the data sampler scales them by ~1e6 per epoch, and
# numpy's seeding: 32 bits keep every derived seed in range.
MAX_SEED = 2**32 - 1
NAME_MAX_BYTES = 255  # longest file name Linux and macOS file systems take
MAX_CONFIG_BYTES = 1 << 20  # a YAML override file is a few hundred bytes; a huge one is the wrong file


def validate(cfg: Config) -> None:
    """Reject wrong types and impossible combinations, naming the key (called by __post_init__)."""
    # `compile` was a boolean before `auto` existed: saved configs and flags saying true / false still work.
    if cfg.compile in (True, False, "true", "false"):
        object.__setattr__(cfg, "compile", "on" if cfg.compile in (True, "true") else "off")
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        expected = _field_type(f)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(cfg, f.name, value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"config key '{f.name}': expected {expected.__name__}, got {value!r}")
        if expected is float and not math.isfinite(value):
            raise ConfigError(f"config key '{f.name}': expected a finite number, got {value!r}")
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key '{key}': {getattr(cfg, key)!r} is not one of {allowed}")
    for key in POSITIVE:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {getattr(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {getattr(cfg, key)!r}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"config key '{key}': must be in [0, 1), got {getattr(cfg, key)!r}")
    if cfg.frame_size_px % cfg.patch_size_px:
        raise ConfigError(f"config keys 'frame_size_px'={cfg.frame_size_px} and 'patch_size_px'="
                          f"{cfg.patch_size_px}: the frame size must be divisible by the patch size")
    if cfg.num_frames % cfg.tubelet_frames:
        raise ConfigError(f"config keys 'num_frames'={cfg.num_frames} and 'tubelet_frames'="
                          f"{cfg.tubelet_frames}: the frame count must be divisible by the tubelet")
    if cfg.zero_terminal_snr and cfg.prediction_type == "eps":
        raise ConfigError("config keys 'zero_terminal_snr'=true and 'prediction_type'='eps': eps "
                          "prediction divides by zero at the pure-noise step; use v, x0 or edm")
    if cfg.pixel_temporal_blend and (cfg.prediction_type != "edm" or not cfg.refine_channels):
        raise ConfigError(f"config key 'pixel_temporal_blend'=true needs 'prediction_type'='edm' (got "
                          f"{cfg.prediction_type!r}) and 'refine_channels' > 0 (got {cfg.refine_channels})")
    if cfg.weight_min_snr > cfg.weight_max_snr:
        raise ConfigError(f"config keys 'weight_min_snr'={cfg.weight_min_snr} > 'weight_max_snr'="
                          f"{cfg.weight_max_snr}")
    if cfg.sampling_steps > cfg.num_timesteps:
        raise ConfigError(f"config key 'sampling_steps'={cfg.sampling_steps}: at most "
                          f"'num_timesteps'={cfg.num_timesteps}")
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ConfigError(f"config keys 'batch_size'={cfg.batch_size} and 'grad_accum_steps'="
                          f"{cfg.grad_accum_steps}: the batch must split evenly into micro-batches")
    if cfg.cpu_streams > 1:
        if (cfg.batch_size // cfg.grad_accum_steps) < cfg.cpu_streams:
            raise ConfigError(f"config key 'cpu_streams'={cfg.cpu_streams}: more streams than clips "
                              f"per micro-batch ({cfg.batch_size // cfg.grad_accum_steps})")
        if cfg.final_norm == "batch":
            raise ConfigError(f"config key 'cpu_streams'={cfg.cpu_streams}: needs final_norm 'group' "
                              "(two streams would write BatchNorm's running statistics at once; streams.py)")
    if cfg.keep_checkpoints < 2:
        raise ConfigError(f"config key 'keep_checkpoints': must be >= 2 so a corrupt latest "
                          f"checkpoint has a fallback, got {cfg.keep_checkpoints}")
    if cfg.dataset != "synthetic" and not cfg.data_root:
        raise ConfigError(f"config key 'data_root': required for dataset '{cfg.dataset}'")
    if cfg.preset not in PRESETS:
        raise ConfigError(f"config key 'preset': {cfg.preset!r} is not one of {tuple(PRESETS)}")
    if cfg.seed > MAX_SEED:
        raise ConfigError(f"config key 'seed': must be at most {MAX_SEED} (2^32 - 1), got {cfg.seed}")
    if cfg.dataset == "synthetic" and (cfg.num_frames < MIN_FRAMES or cfg.frame_size_px < MIN_FRAME_SIZE_PX):
        key, low = ("num_frames", MIN_FRAMES) if cfg.num_frames < MIN_FRAMES else ("frame_size_px", MIN_FRAME_SIZE_PX)
        raise ConfigError(f"config key '{key}': the synthetic signer needs at least {low}, got "
                          f"{getattr(cfg, key)}")
    name = cfg.experiment_name
    if (not name or os.sep in name or name in (".", "..") or not name.isprintable()
            or len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES):
        shown = f"{name[:60]!r}... ({len(name.encode('utf-8', 'surrogatepass'))} bytes)" if len(name) > 60 else repr(name)
        raise ConfigError(f"config key 'experiment_name': {shown} must be a plain folder name: no "
                          f"'{os.sep}', no control characters or NUL, at most {NAME_MAX_BYTES} bytes")
    if not cfg.output_dir or "\0" in cfg.output_dir:
        raise ConfigError(f"config key 'output_dir': {cfg.output_dir!r} must be a folder path without NUL bytes")
    if cfg.model_size not in MODEL_SIZES:
        raise ConfigError(f"config key 'model_size': {cfg.model_size!r} is not one of "
                          f"{tuple(MODEL_SIZES)}")


# Named presets: small overrides of the recipe (the dataclass defaults). `cpu` is the README's demo.
PRESETS: dict[str, dict[str, Any]] = {
    # Tests: the recipe at toy size, a training step in well under a second on CPU; fp32 whatever the
    # hardware, so the tests' numerics do not depend on the machine (precision `auto` does).
    "tiny": dict(model_size="tiny", precision="fp32", num_frames=4, frame_size_px=16, patch_size_px=4, text_depth=1,
                 frame_cond_depth=1, sampling_steps=5, num_train_samples=64, num_eval_samples=8,
                 batch_size=4, max_steps=20, warmup_steps=2, log_every_steps=5, sample_every_steps=0,
                 checkpoint_every_steps=10, num_sample_prompts=2, eval_at_end=False, tensorboard=False,
                 num_workers=0),
    "cpu": {},
    # The recipe for longer (row 35): 3900 steps instead of the demo's 1000.
    "cpu_long": dict(max_steps=3900, sample_every_steps=1300, checkpoint_every_steps=600),
    # One modern GPU: the recipe at 32 frames x 64x64 with a bigger model.
    "gpu": dict(model_size="B", num_frames=32, frame_size_px=64, patch_size_px=4, decoder_channels=32,
                batch_size=32, max_steps=50000, lr=3e-4, warmup_steps=1000, ema_decay=0.9999,
                num_train_samples=200000, num_workers=8, cpu_streams=1, sample_every_steps=5000,
                checkpoint_every_steps=2500, device="cuda", compile="on"),
    # Data without keypoints: no pose stage, and the extra weight on moving pixels that makes the hands
    # move without one (row 2).
    "no_keypoints": dict(pose_cond=False, motion_loss_weight=4.0),
}

# Keys removed after measurement (docs/experiments.md keeps their rows): a saved config may name them
# only at the value that switched them off.
REMOVED_KEYS: dict[str, Any] = {"x0_skip_snr": 0.0, "noise_shared_frac": 0.0, "pose_truth_min_t": 0,
                                "long_skips": False}
# What a key meant before it existed: a config saved by an earlier version lacks it, and must keep
# its old behaviour, not gain today's recipe (an old demo checkpoint must not grow a pose stage).
LEGACY_DEFAULTS: dict[str, Any] = {"frame_cond_depth": 0, "cpu_streams": 1, "pose_cond": False,
                                   "timestep_sampling_power": 0.0, "sigma_data": 0.5, "refine_channels": 0,
                                   "pose_skeleton": "hands", "pixel_lr_mult": 1.0,
                                   "temporal_diff_loss_weight": 0.0, "pixel_norm_over_clip": False,
                                   "pixel_temporal_blend": False, "pose_depth": 0}


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, [f.name for f in fields(Config)], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_value(key: str, text: str) -> Any:
    """Parse a command-line string for `key` against the field's type."""
    types = {f.name: _field_type(f) for f in fields(Config)}
    if key not in types:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")
    kind = types[key]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key '{key}': expected a boolean (true/false), got {text!r}")
    try:
        return kind(text) if kind is not int else int(text, 10)
    except ValueError:
        raise ConfigError(f"config key '{key}': expected {kind.__name__}, got {text!r}") from None


def make_config(preset: str = "cpu", overrides: dict[str, Any] | None = None) -> Config:
    """Build a validated config from a preset plus overrides (keys checked, types checked)."""
    if not isinstance(preset, str):
        raise ConfigError(f"config key 'preset': expected a preset name (one of {', '.join(PRESETS)}), "
                          f"got {preset!r}")
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown preset '{preset}'{hint}; presets: {', '.join(PRESETS)}")
    values: dict[str, Any] = {**PRESETS[preset], "preset": preset}
    names = {f.name for f in fields(Config)}
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")
        values[key] = value
    return Config(**values)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved in a run folder or checkpoint (every key must be known).

    A saved config holds every setting that existed when it was written; a key it lacks was added
    later and gets LEGACY_DEFAULTS' value (its behaviour before it existed), else the default. A key
    removed since is accepted only at the value that had switched it off.
    """
    values = dict(values)
    for key, off in REMOVED_KEYS.items():
        if key in values and values.pop(key) != off:
            raise ConfigError(f"config key '{key}' was removed (docs/experiments.md keeps its rows); "
                              f"this config switches it on, which this version cannot rebuild")
    full = {f.name: LEGACY_DEFAULTS.get(f.name, f.default) for f in fields(Config)} | values
    return make_config(full.get("preset", "cpu"), {k: v for k, v in full.items() if k != "preset"})


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML override file (a flat mapping of config keys), safely."""
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise ConfigError(f"--config {path}: not a regular file (a device or pipe?); expected a YAML file")
    if os.path.isfile(path) and os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: {os.path.getsize(path)} bytes; a config file is a short YAML "
                          f"mapping (at most {MAX_CONFIG_BYTES} bytes)")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a folder, expected a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not a UTF-8 text file (byte {exc.start}); expected a YAML "
                          "mapping of config keys") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys, got {type(data).__name__}")
    names = {f.name for f in fields(Config)}
    for key in data:
        if key not in names:
            raise ConfigError(f"--config {path}: unknown config key '{key}'{_suggest(str(key))}")
    if "preset" in data and not isinstance(data["preset"], str):
        raise ConfigError(f"--config {path}: config key 'preset': expected a preset name (one of "
                          f"{', '.join(PRESETS)}), got {data['preset']!r}")
    return data


def parse_cli(argv: list[str]) -> tuple[Config, bool]:
    """Parse `[--preset P] [--config F] [--key value ...] [--dry_run]`; returns (config, dry_run)."""
    preset, yaml_path, dry_run = None, None, False
    cli: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(cli_help())
            sys.exit(0)
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: settings are given as --key value")
        key, _, inline = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "dry_run":
            dry_run = True
            i += 1
            continue
        if inline:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key}: missing value")
            value = argv[i + 1]
            i += 2
        if key == "preset":
            preset = value
        elif key == "config":
            yaml_path = value
        else:
            cli[key] = parse_value(key, value)
    overrides = load_yaml(yaml_path) if yaml_path else {}
    yaml_preset = overrides.pop("preset", "cpu")
    overrides.update(cli)
    return make_config(preset or yaml_preset, overrides), dry_run


def cli_help() -> str:
    lines = ["usage: python main.py --experiment_name NAME [--preset P] [--config F.yaml] "
             "[--key value ...] [--dry_run]", "", f"presets: {', '.join(PRESETS)}", "", "keys:"]
    source = open(__file__).read().splitlines()
    for f in fields(Config):
        comment = next((ln.split("#", 1)[1].strip() for ln in source
                        if ln.strip().startswith(f"{f.name}:") and "#" in ln), "")
        lines.append(f"  --{f.name} ({_field_type(f).__name__}, default {f.default!r}): {comment}")
    return "\n".join(lines)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
