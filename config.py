"""One typed config for text2sign: defaults, named presets, YAML/CLI overrides, validation.

Every setting lives in `Config` with a one-line comment (unit, typical value). A run is described by
`preset` + optional `--config FILE.yaml` + `--key value` overrides, applied in that order. Unknown keys
and bad values fail before any work, naming the key and suggesting the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad key, value or combination in the configuration (the message names it)."""


@dataclass
class Config:
    # --- run ---------------------------------------------------------------------------------
    experiment_name: str = "default"  # run folder name under output_dir; same name again resumes
    output_dir: str = "experiments"  # parent folder of all run folders
    preset: str = "cpu"  # named preset these values started from (see PRESETS)
    seed: int = 0  # seeds data order, noise, init; same seed -> same run
    device: str = "auto"  # auto (cuda if present, else cpu) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on cuda, fp32 on cpu) | fp32 | bf16
    compile: bool = False  # torch.compile the denoiser (pays off on GPU for long runs)
    num_threads: int = 0  # CPU intra-op threads; 0 = torch default (all cores)
    cpu_streams: int = 1  # CPU training: micro-batches run concurrently, 1 thread each (streams.py)

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
    num_workers: int = 0  # DataLoader worker processes (0 = render in the main process)
    sample_fps: float = 0.0  # real data: resample clips to this frame rate; 0 = every frame
    text_field: str = "translation"  # phoenix: translation (German text) | orth (glosses)
    signer_disjoint: bool = False  # real data with signer ids: make splits signer-disjoint
    cache_dir: str = ""  # real data: preprocessed-clip cache; "" = <data_root>/.text2sign_cache
    max_bad_clip_fraction: float = 0.05  # stop when more than this share of clips fail to decode

    # --- model (ViViT denoiser) --------------------------------------------------------------
    model_size: str = "S"  # entry in models.architectures.vivit.MODEL_SIZES (width/depth/heads)
    patch_size_px: int = 8  # spatial patch side, pixels (frame_size_px must be divisible)
    tubelet_frames: int = 1  # frames per token (num_frames must be divisible)
    mlp_ratio: float = 4.0  # transformer MLP hidden width / model width
    text_depth: int = 2  # layers of the text transformer
    frame_cond_depth: int = 0  # layers of the text -> per-frame adaLN decoder (FrameAligner); 0 = off
    long_skips: bool = False  # U-ViT long skips: block i's output feeds block depth-1-i
    decoder_channels: int = 16  # channels of x_up, the pixel-space features before the final projection
    final_norm: str = "group"  # group | batch: normalization in the final projection (seed used batch)
    output_scale_init: float = 0.5  # initial value of the learnable output_scale (seed: 0.5)
    temporal_modulation_weight: float = 0.5  # weight of the timestep modulation (seed changed 0.1 -> 0.5)
    residual_input: bool = False  # historical bug: out = final_conv(x_up) + x; diagnostics only
    activation_checkpointing: bool = False  # recompute block activations in backward (long clips)
    pose_cond: bool = False  # text -> hand-position stage whose heatmaps guide the denoiser (needs hand labels)

    # --- diffusion ---------------------------------------------------------------------------
    num_timesteps: int = 50  # T, diffusion steps t = 0..T-1 (seed: 50)
    beta_schedule: str = "cosine"  # linear | cosine
    zero_terminal_snr: bool = False  # rescale so the last step is pure noise (needs v or x0)
    prediction_type: str = "x0"  # eps | v | x0: what the denoiser outputs
    x0_skip_snr: float = 0.0  # x0 only: x0 = c x_t/√ᾱ + (1-c) out, c = SNR/(SNR + this); 0 = off
    loss_weighting: str = "snr_clamp"  # snr_clamp (seed) | min_snr | x0 (x0-space MSE) | none
    use_timestep_weighting: bool = True  # seed switch: False disables any loss_weighting
    weight_min_snr: float = 0.1  # snr_clamp lower clamp on SNR (seed: 0.1)
    weight_max_snr: float = 10.0  # snr_clamp upper clamp on SNR (seed: 10.0)
    min_snr_gamma: float = 5.0  # min_snr's gamma (Hang et al. 2023)
    motion_loss_weight: float = 0.0  # extra loss weight on pixels that move in the clean clip
    noise_shared_frac: float = 0.0  # share of the noise variance common to all frames (PYoCo); 0 = iid
    timestep_sampling_power: float = 0.0  # training t ~ (t+1)^power; 0 = uniform, 1-2 favour high noise
    cond_drop_prob: float = 0.1  # training: probability of replacing the text by the null text
    pose_truth_min_t: int = 0  # pose_cond training: true positions in the heatmaps only at t >= this, the stage's below
    pose_loss_weight: float = 10.0  # pose_cond: weight of the hand-position MSE (frame units²) in the loss
    guidance_scale: float = 1.0  # sampling: classifier-free guidance scale (1 = conditional only)
    sampler: str = "ddim"  # ddim | ddpm
    sampling_steps: int = 20  # DDIM steps (ddpm always uses num_timesteps)
    ddim_eta: float = 0.0  # DDIM stochasticity (0 = deterministic, 1 = DDPM-like)

    # --- optimisation ------------------------------------------------------------------------
    max_steps: int = 3000  # optimizer steps of the run
    batch_size: int = 16  # clips per optimizer step (global, over all ranks and accumulation)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 100  # linear LR warm-up, steps
    weight_decay: float = 0.01  # AdamW weight decay (not on norms, biases, embeddings)
    adam_beta2: float = 0.99  # AdamW beta2
    grad_clip_norm: float = 1.0  # clip the global gradient norm to this
    ema_decay: float = 0.999  # EMA decay ceiling; warm-up min(decay, (1+s)/(10+s)) before it

    # --- logging, checkpoints, samples ---------------------------------------------------------
    log_every_steps: int = 25  # metrics.jsonl / TensorBoard interval
    sample_every_steps: int = 1000  # GIF/MP4 samples of the fixed prompts from the EMA; 0 = end only
    checkpoint_every_steps: int = 500  # periodic checkpoint interval (also saved at the end)
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
    "dataset": ("synthetic", "how2sign", "phoenix", "wlasl", "folder"),
    "text_field": ("translation", "orth"),
    "tokenizer": ("word", "bpe"),  # data.text.TOKENIZER_KINDS
    "final_norm": ("group", "batch"),
    "beta_schedule": ("linear", "cosine"),
    "prediction_type": ("eps", "v", "x0"),
    "loss_weighting": ("snr_clamp", "min_snr", "x0", "none"),
    "sampler": ("ddim", "ddpm"),
}

POSITIVE = (
    "num_frames", "frame_size_px", "num_train_samples", "num_eval_samples", "max_text_len_tokens",
    "patch_size_px", "tubelet_frames", "mlp_ratio", "text_depth", "decoder_channels", "num_timesteps",
    "sampling_steps", "max_steps", "batch_size", "grad_accum_steps", "lr", "log_every_steps",
    "checkpoint_every_steps", "num_sample_prompts", "weight_min_snr", "weight_max_snr",
    "min_snr_gamma", "cpu_streams",
    "subword_vocab_size",
)
NON_NEGATIVE = (
    "num_threads", "num_workers", "sample_fps", "warmup_steps", "weight_decay", "grad_clip_norm",
    "sample_every_steps", "motion_loss_weight", "timestep_sampling_power", "frame_cond_depth",
    "min_lr_ratio", "ddim_eta", "x0_skip_snr", "pose_loss_weight", "pose_truth_min_t",
    "max_bad_clip_fraction",
    "output_scale_init", "temporal_modulation_weight",
)


def validate(cfg: Config) -> None:
    """Reject wrong types and impossible combinations, naming the key (called by __post_init__)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        expected = _field_type(f)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(cfg, f.name, value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"config key '{f.name}': expected {expected.__name__}, got {value!r}")
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key '{key}': {getattr(cfg, key)!r} is not one of {allowed}")
    for key in POSITIVE:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {getattr(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {getattr(cfg, key)!r}")
    if cfg.frame_size_px % cfg.patch_size_px:
        raise ConfigError(f"config keys 'frame_size_px'={cfg.frame_size_px} and 'patch_size_px'="
                          f"{cfg.patch_size_px}: the frame size must be divisible by the patch size")
    if cfg.num_frames % cfg.tubelet_frames:
        raise ConfigError(f"config keys 'num_frames'={cfg.num_frames} and 'tubelet_frames'="
                          f"{cfg.tubelet_frames}: the frame count must be divisible by the tubelet")
    if cfg.zero_terminal_snr and cfg.prediction_type == "eps":
        raise ConfigError("config keys 'zero_terminal_snr'=true and 'prediction_type'='eps': eps "
                          "prediction divides by zero at the pure-noise step; use v or x0")
    if cfg.x0_skip_snr and cfg.prediction_type != "x0":
        raise ConfigError(f"config key 'x0_skip_snr'={cfg.x0_skip_snr}: needs 'prediction_type'='x0', "
                          f"got {cfg.prediction_type!r}")
    if cfg.weight_min_snr > cfg.weight_max_snr:
        raise ConfigError(f"config keys 'weight_min_snr'={cfg.weight_min_snr} > 'weight_max_snr'="
                          f"{cfg.weight_max_snr}")
    if not 0.0 <= cfg.noise_shared_frac < 1.0:
        raise ConfigError(f"config key 'noise_shared_frac': must be in [0, 1), got {cfg.noise_shared_frac}")
    if not 0.0 <= cfg.cond_drop_prob < 1.0:
        raise ConfigError(f"config key 'cond_drop_prob': must be in [0, 1), got {cfg.cond_drop_prob}")
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
        if cfg.final_norm == "batch" or cfg.compile:
            raise ConfigError(f"config key 'cpu_streams'={cfg.cpu_streams}: needs final_norm 'group' "
                              "and compile false (streams share one eager model; see streams.py)")
    if cfg.keep_checkpoints < 2:
        raise ConfigError(f"config key 'keep_checkpoints': must be >= 2 so a corrupt latest "
                          f"checkpoint has a fallback, got {cfg.keep_checkpoints}")
    if cfg.dataset != "synthetic" and not cfg.data_root:
        raise ConfigError(f"config key 'data_root': required for dataset '{cfg.dataset}'")
    if cfg.preset not in PRESETS:
        raise ConfigError(f"config key 'preset': {cfg.preset!r} is not one of {tuple(PRESETS)}")
    if not cfg.experiment_name or os.sep in cfg.experiment_name or cfg.experiment_name in (".", ".."):
        raise ConfigError(f"config key 'experiment_name': {cfg.experiment_name!r} must be a plain "
                          "folder name")
    from models.architectures.vivit import MODEL_SIZES  # the registry owns the valid sizes

    if cfg.pose_cond and cfg.dataset != "synthetic":
        raise ConfigError(f"config key 'pose_cond'=true: needs per-frame hand positions, which only "
                          f"the synthetic dataset has (dataset '{cfg.dataset}'); add --pose_cond false")
    if cfg.model_size not in MODEL_SIZES:
        raise ConfigError(f"config key 'model_size': {cfg.model_size!r} is not one of "
                          f"{tuple(MODEL_SIZES)}")


# The default demo on a 2-core CPU (about 15 minutes). Uniform x0 loss: in a 400-step probe the
# seed's snr_clamp weighting (which puts 100x more weight on the low-noise steps) left the hands
# still (motion ratio 0.06); uniform loss with 4x weight on the moving pixels made them move (1.01).
# Since the pose stage shows the model where the hands go, the motion weight only starves the
# static regions: without it the static noise drops 0.014 -> 0.009 and the hands still move
# (motion ratio 0.92-0.95; docs/experiments.md, rows 36-38).
# Two-frame tubelets and 8 decoder channels train 2.2x the samples/s of 1-frame tokens and 16
# channels, and samples seen decide when the text conditioning switches on; t favours high
# noise, where the text decides the layout (docs/experiments.md, rows 11-17). FrameAligner
# (2 layers) gives the text a direct path to each frame's modulation: prompt ranking 0.63 -> 0.81
# at the same step count and about the same step time (row 18).
_CPU: dict[str, Any] = dict(max_steps=1100, tubelet_frames=2, decoder_channels=8, frame_cond_depth=2,
            loss_weighting="none", motion_loss_weight=0.0, timestep_sampling_power=1.0,
            sample_every_steps=550, checkpoint_every_steps=275,
            # One render worker: the 16 clips of a step (~65 ms) render beside the step, not in
            # front of it (data wait 9.6% -> 0.9% of step time, same samples/s; performance.md).
            # Two 1-thread streams of 8 clips: +6-15% samples/s over one 2-thread pass.
            num_workers=1, cpu_streams=2,
            # The pose stage (text -> hand positions -> heatmaps beside x_t): back-translated
            # gloss accuracy 0.12 -> 0.99 on unseen combinations (docs/experiments.md, row 29).
            # With it guidance 3 reads no more signs than guidance 1 but doubles the static
            # noise (0.024 vs 0.013), so sampling is unguided (one forward per step).
            pose_cond=True)


# Named presets: overrides of the dataclass defaults. `cpu` is the README's demo.
PRESETS: dict[str, dict[str, Any]] = {
    # Tests: a training step in well under a second on CPU.
    "tiny": dict(model_size="tiny", num_frames=4, frame_size_px=16, patch_size_px=4,
                 decoder_channels=8, text_depth=1, num_timesteps=50, sampling_steps=5,
                 num_train_samples=64, num_eval_samples=8, batch_size=4, max_steps=20,
                 warmup_steps=2, log_every_steps=5, sample_every_steps=0,
                 checkpoint_every_steps=10, num_sample_prompts=2, eval_at_end=False,
                 tensorboard=False),
    "cpu": _CPU,
    # A longer CPU run (about 50 minutes on 2 cores) for the higher targets: the demo's recipe for
    # 3900 steps instead of 1100. Static noise 0.0063 (0.0087 with the motion weighting the demo
    # had then; docs/experiments.md, rows 31 and 35), every sign figure unchanged.
    "cpu_long": dict(_CPU, max_steps=3900, sample_every_steps=1300, checkpoint_every_steps=600),
    # One modern GPU: 32 frames x 64x64, a bigger model, bf16.
    "gpu": dict(model_size="B", num_frames=32, frame_size_px=64, patch_size_px=4,
                tubelet_frames=2, decoder_channels=32, batch_size=32, max_steps=50000, lr=3e-4,
                warmup_steps=1000, ema_decay=0.9999, num_train_samples=200000,
                num_workers=8, sample_every_steps=5000, checkpoint_every_steps=2500,
                device="cuda", precision="bf16", compile=True),
}


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
    later and gets the dataclass default (the behaviour before it existed), not today's preset
    value: an old demo checkpoint must not grow the pose stage the `cpu` preset has now.
    """
    full = {f.name: f.default for f in fields(Config)} | values
    return make_config(full.get("preset", "cpu"), {k: v for k, v in full.items() if k != "preset"})


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML override file (a flat mapping of config keys), safely."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys, got {type(data).__name__}")
    names = {f.name for f in fields(Config)}
    for key in data:
        if key not in names:
            raise ConfigError(f"--config {path}: unknown config key '{key}'{_suggest(str(key))}")
    return data


def parse_cli(argv: list[str]) -> tuple[Config, bool]:
    """Parse `[--preset P] [--config F] [--key value ...] [--dry-run]`; returns (config, dry_run)."""
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
             "[--key value ...] [--dry-run]", "", f"presets: {', '.join(PRESETS)}", "", "keys:"]
    source = open(__file__).read().splitlines()
    for f in fields(Config):
        comment = next((ln.split("#", 1)[1].strip() for ln in source
                        if ln.strip().startswith(f"{f.name}:") and "#" in ln), "")
        lines.append(f"  --{f.name} ({_field_type(f).__name__}, default {f.default!r}): {comment}")
    return "\n".join(lines)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
