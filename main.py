"""Train the text2sign ViViT diffusion model.

    python main.py --experiment_name demo                       # the default demo (cpu preset)
    python main.py --experiment_name t --preset tiny --max_steps 20
    torchrun --nproc_per_node=2 main.py --experiment_name ddp   # DistributedDataParallel

Running the same experiment name again resumes from its latest checkpoint. Reads top to bottom:
config -> distributed/device -> data -> model/EMA/optimizer -> resume -> loop -> samples/eval.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from checkpoint import (FORMAT_VERSION, CheckpointError, load_latest, load_weights, rng_state,
                        save_checkpoint, set_rng_state, unwrap)
from config import Config, ConfigError, dump_yaml, parse_cli
from data import build_dataset, make_train_loader
from data.text import build_tokenizer, tokenizer_from_state, usable_prompt
from diffusion.text2sign import Text2SignDiffusion, per_timestep_mse
from models import build_model
from pipeline import generate, model_config_mismatch, resolve_device, run_dir, save_samples
from streams import StreamedBackward, slice_loss_fn

EXIT_NONFINITE = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio: a pure function of the step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """EMA with the diffusers warm-up: decay_n = min(decay, (1 + n) / (10 + n)); starts as an exact copy.

    One foreach lerp over all tensors per step instead of a per-tensor avg_fn (~7 small ops per
    tensor): with the fused AdamW, 10.5% off a cpu-preset step (docs/performance.md, round 3). The
    warm-up decay stays a tensor, so CUDA never syncs.
    """
    @torch.no_grad()
    def ema_update(avg: list[torch.Tensor], new: list[torch.Tensor], num_updates: torch.Tensor) -> None:
        if not avg[0].is_floating_point():  # integer buffers (BatchNorm's counter): keep the latest
            for a, n in zip(avg, new):
                a.copy_(n)
            return
        weight = 1 - torch.clamp((1 + num_updates) / (10 + num_updates), max=decay).to(avg[0].dtype)
        torch._foreach_lerp_(avg, new, [weight] * len(avg))
    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW, fused on every device (torch's fused CPU kernel: one pass over all tensors)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(0.9, cfg.adam_beta2), fused=True)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, positions and scalars (the usual GPT/DiT split)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed.weight" not in name and "pos" not in name else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def main(argv: list[str]) -> int:
    """Train; returns the exit code. Signal handlers are put back afterwards, so a caller of main()
    (tests, notebooks) keeps its own Ctrl-C behaviour."""
    previous_handlers = {sig: signal.getsignal(sig) for sig in EXIT_SIGNAL}
    try:
        return train(argv)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def train(argv: list[str]) -> int:
    # --- config ----------------------------------------------------------------------------------
    try:
        cfg, dry_run = parse_cli(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dry_run:
        print(dump_yaml(cfg), end="")
        return 0

    # --- distributed, device, seeds --------------------------------------------------------------
    distributed = "RANK" in os.environ
    rank, world = 0, 1
    device = resolve_device(cfg.device)
    if distributed:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + rank)
    # Diffusion draws (t, noise, text dropout) come from one generator with the same seed on every
    # rank: each rank draws the global batch and keeps its slice, so N ranks == 1 process.
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed)

    out_dir = run_dir(cfg)
    try:
        found = load_latest(out_dir, "cpu", log=log)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = found[0] if found else None
    if state is not None:
        mismatch = model_config_mismatch(state["config"], cfg)
        if mismatch:
            print(f"error: checkpoint {found[1]} was trained with different model settings: " +
                  ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in mismatch.items()),
                  file=sys.stderr)
            return 2

    # --- data ------------------------------------------------------------------------------------
    train_set = build_dataset(cfg, "train")
    tokenizer = tokenizer_from_state(state["tokenizer"]) if state else build_tokenizer(cfg, train_set.captions)
    first = train_set[0]
    expected = (3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    if tuple(first["video"].shape) != expected:
        raise ValueError(f"dataset '{cfg.dataset}' sample 0 has video shape {tuple(first['video'].shape)}, "
                         f"expected {expected}")
    prompt_split = "test" if cfg.dataset == "synthetic" else "val"
    # Fixed prompts for the periodic samples; a caption with no training word would be rejected by
    # encode_prompts (see pipeline.py), so such captions are skipped here rather than at sampling time.
    sample_prompts = [c for c in build_dataset(cfg, prompt_split).captions
                      if usable_prompt(tokenizer, c, cfg.max_text_len_tokens)][: cfg.num_sample_prompts]

    # --- model, EMA, optimizer, resume ------------------------------------------------------------
    model = build_model(cfg, len(tokenizer)).to(device)
    ema = make_ema(model, cfg.ema_decay)
    optimizer = make_optimizer(model, cfg)
    diffusion = Text2SignDiffusion.from_config(cfg, device)
    start_step = 0
    if state is not None:
        try:
            load_weights(model, state["model"], found[1])
            load_weights(ema.module, state["ema"], found[1])
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ema.n_averaged.fill_(state["ema_num_updates"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"], noise_gen)
        log(f"Resuming experiment '{cfg.experiment_name}' from {found[1]} at step {start_step}")
    net = DDP(model) if distributed else model
    if cfg.compile:
        net = torch.compile(net)
    # Concurrent micro-batch streams are a single-process CPU path; under torchrun each rank is one.
    streams = cfg.cpu_streams if device.type == "cpu" and not distributed else 1
    if streams != cfg.cpu_streams:
        log(f"cpu_streams={cfg.cpu_streams} ignored ({'torchrun' if distributed else device.type}): 1 stream")
    backward = StreamedBackward(model, streams)
    loader = make_train_loader(cfg, train_set, tokenizer, start_step, rank, world)
    batches = iter(loader)

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "config.yaml.tmp"
        tmp.write_text(dump_yaml(cfg))
        os.replace(tmp, out_dir / "config.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"text2sign: {cfg.experiment_name} | preset {cfg.preset} | {n_params / 1e6:.2f}M params | "
            f"{len(train_set)} train clips | vocab {len(tokenizer)} | device {device}"
            f"{' bf16' if use_bf16 else ' fp32'} | world {world} | run folder {out_dir}")
    writer = None
    if is_main and cfg.tensorboard:
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out_dir / "tb"))

    def checkpoint_state(step: int) -> dict:
        rngs = rng_state(noise_gen)
        if distributed:
            # all_gather_object fails to unpickle tensors here ("UntypedStorage has no attribute
            # dtype"): gather each rank's RNG state as torch.save bytes instead.
            buffer = io.BytesIO()
            torch.save(rngs, buffer)
            gathered = [None] * world
            dist.all_gather_object(gathered, buffer.getvalue())
            rngs = [torch.load(io.BytesIO(b), weights_only=True) for b in gathered]
        return dict(format_version=FORMAT_VERSION, step=step, data_position=step * cfg.batch_size,
                    model=unwrap(model).state_dict(), ema=ema.module.state_dict(),
                    ema_num_updates=int(ema.n_averaged), optimizer=optimizer.state_dict(), rng=rngs,
                    config=cfg.to_dict(), tokenizer=tokenizer.state())

    def save(step: int) -> None:
        state = checkpoint_state(step)
        if is_main:
            save_checkpoint(out_dir, state, cfg.keep_checkpoints)

    def write_samples(step: int) -> None:
        if is_main and sample_prompts:
            videos = generate(ema.module, diffusion, tokenizer, sample_prompts, cfg, seed=cfg.seed)
            paths = save_samples(out_dir / "samples" / f"step_{step:08d}", videos)
            with open(out_dir / "samples" / f"step_{step:08d}.txt", "w") as fh:
                fh.write("\n".join(sample_prompts) + "\n")
            log(f"samples at step {step}: {paths[0]}")

    stop_signal = []
    for sig in EXIT_SIGNAL:
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

    # --- the loop --------------------------------------------------------------------------------
    micro = cfg.batch_size // (cfg.grad_accum_steps * world)
    quartile_sums, quartile_counts = torch.zeros(4), torch.zeros(4)
    window_loss, window_n, window_t0, window_samples = 0.0, 0, time.perf_counter(), 0
    # pose_cond: sum and count of the pose stage's hand-position MSE per micro-batch (this rank's),
    # kept on the device like the loss: no host sync per step.
    window_pose_mse, window_pose_n = torch.zeros((), device=device), 0
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not is_main, dynamic_ncols=True)
    step = start_step
    net.train()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_indices = torch.zeros((), device=device), []
        for micro_step in range(cfg.grad_accum_steps):
            batch = next(batches)
            x0 = batch["video"].to(device, non_blocking=True)
            tokens, mask = batch["tokens"].to(device), batch["token_mask"].to(device)
            step_indices += batch["index"]
            t, noise, drop = diffusion.draw_training_noise((micro * world, *x0.shape[1:]), noise_gen, device)
            part = slice(rank * micro, (rank + 1) * micro)
            sync = not distributed or micro_step == cfg.grad_accum_steps - 1
            hand_xy = batch["hand_xy"].to(device) if cfg.pose_cond else None
            loss_fn = slice_loss_fn(diffusion, net, x0, tokens, mask, (t[part], noise[part], drop[part]),
                                    use_bf16, hand_xy)
            with contextlib.nullcontext() if sync else net.no_sync():
                result = backward(loss_fn, x0.shape[0], scale=1 / cfg.grad_accum_steps)
            step_loss += result["loss"].detach() / cfg.grad_accum_steps
            if "pose_mse" in result:
                window_pose_mse += result["pose_mse"]
                window_pose_n += 1
            sums, counts = per_timestep_mse(result["per_sample"], result["t"], diffusion.num_timesteps)
            bucket = torch.arange(diffusion.num_timesteps) * 4 // diffusion.num_timesteps
            quartile_sums.index_add_(0, bucket, sums)
            quartile_counts.index_add_(0, bucket, counts)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        if distributed:
            dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
        if not (torch.isfinite(step_loss) and torch.isfinite(grad_norm)):
            # Stop before the optimizer step: parameters and the last checkpoint stay good.
            print(f"error: non-finite loss {step_loss.item()} or gradient norm {grad_norm.item()} at "
                  f"step {step}, batch indices {step_indices}; no optimizer step taken, last good "
                  f"checkpoint kept", file=sys.stderr)
            return EXIT_NONFINITE
        optimizer.step()
        ema.update_parameters(model)
        step += 1
        window_loss += step_loss.item()
        window_n += 1
        window_samples += cfg.batch_size
        bar.update(1)

        if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
            if distributed:  # per-timestep losses of every rank's samples, not only rank 0's
                both = torch.stack([quartile_sums, quartile_counts]).to(device)
                dist.all_reduce(both)
                quartile_sums, quartile_counts = both.cpu().unbind(0)
            elapsed = time.perf_counter() - window_t0
            record = dict(step=step, loss=window_loss / window_n, lr=lr, grad_norm=float(grad_norm),
                          samples_per_s=window_samples / elapsed,
                          **{f"loss_q{q + 1}": float(quartile_sums[q] / quartile_counts[q].clamp(min=1))
                             for q in range(4)})
            if window_pose_n:  # RMS error of one hand coordinate, in pixels
                record["pose_rmse_px"] = (window_pose_mse.item() / window_pose_n) ** 0.5 * cfg.frame_size_px
            if is_main:
                with open(out_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if writer:
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(f"train/{key}", value, step)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                sps=f"{record['samples_per_s']:.1f}")
            quartile_sums.zero_(), quartile_counts.zero_()
            window_loss, window_n, window_t0, window_samples = 0.0, 0, time.perf_counter(), 0
            window_pose_mse, window_pose_n = torch.zeros((), device=device), 0

        # Every rank must agree on stopping at this step (a signal may reach only some of them).
        stop = torch.tensor(float(bool(stop_signal)), device=device)
        if distributed:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item() or step % cfg.checkpoint_every_steps == 0 or step == cfg.max_steps:
            try:
                save(step)
            except CheckpointError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        if stop.item():
            signum = stop_signal[0] if stop_signal else signal.SIGTERM
            log(f"\nstopped by signal {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                f"run the same command again to resume")
            return EXIT_SIGNAL[signum]
        if cfg.sample_every_steps and step % cfg.sample_every_steps == 0 and step < cfg.max_steps:
            write_samples(step)
    bar.close()
    backward.close()

    # --- samples and evaluation at the end -------------------------------------------------------
    if start_step < cfg.max_steps or not (out_dir / "samples" / f"step_{step:08d}.gif").exists():
        write_samples(step)
    if is_main and cfg.eval_at_end and cfg.dataset == "synthetic":
        from evaluation.runner import evaluate_run

        evaluate_run(ema.module, diffusion, tokenizer, cfg, split="test",
                     json_path=out_dir / "eval_test.json", log=log)
    if writer:
        writer.close()
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
