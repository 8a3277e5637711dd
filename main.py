"""Train the text2sign ViViT diffusion model.

    python main.py --experiment_name demo                       # the default demo (cpu preset)
    python main.py --experiment_name t --preset tiny --max_steps 20
    torchrun --nproc_per_node=2 main.py --experiment_name ddp   # DistributedDataParallel

Running the same experiment name again resumes from its latest checkpoint. Reads top to bottom:
config -> distributed/device -> resume state -> data -> model/trainer -> loop -> samples/eval.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import CheckpointError, load_latest, model_config_mismatch, save_checkpoint, write_text_atomic
from config import ConfigError, dump_yaml, parse_cli
from data import build_dataset, check_dataset, make_train_loader
from data.text import build_tokenizer, tokenizer_from_state, usable_prompt
from diffusion import build_diffusion, build_objective
from models import build_model
from pipeline import generate, resolve_device, run_dir, save_samples
from training import MetricsWindow, NonFiniteError, Trainer, choose_precision

EXIT_NONFINITE = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


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
        device = resolve_device(cfg.device)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dry_run:
        print(dump_yaml(cfg), end="")
        return 0

    # --- distributed, device, precision, seeds (torchrun sets RANK; rank 0 logs and saves) --------
    distributed, rank, world = "RANK" in os.environ, 0, 1
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    precision = choose_precision(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + rank)

    # --- the run folder and the state to resume from ---------------------------------------------
    out_dir = run_dir(cfg)
    try:
        found = load_latest(out_dir, "cpu", log=log)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state, state_path = found if found else (None, None)
    mismatch = model_config_mismatch(state["config"], cfg) if state else {}
    if mismatch:
        print(f"error: checkpoint {state_path} was trained with different model settings: " +
              ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in mismatch.items()),
              file=sys.stderr)
        return 2

    # --- data ------------------------------------------------------------------------------------
    train_set = build_dataset(cfg, "train")
    check_dataset(cfg, train_set)
    tokenizer = tokenizer_from_state(state["tokenizer"]) if state else build_tokenizer(cfg, train_set.captions)
    prompt_split = "test" if cfg.dataset == "synthetic" else "val"
    sample_prompts = [c for c in build_dataset(cfg, prompt_split).captions
                      if usable_prompt(tokenizer, c, cfg.max_text_len_tokens)][: cfg.num_sample_prompts]

    # --- model, diffusion, trainer, resume --------------------------------------------------------
    model = build_model(cfg, len(tokenizer)).to(device)
    diffusion = build_diffusion(cfg, device)
    # Concurrent micro-batch streams are a single-process CPU path; under torchrun each rank is one.
    streams = cfg.cpu_streams if device.type == "cpu" and not distributed else 1
    if streams != cfg.cpu_streams:
        log(f"cpu_streams={cfg.cpu_streams} ignored ({'torchrun' if distributed else device.type}): 1 stream")
    trainer = Trainer(cfg, model, build_objective(cfg, diffusion), device, precision, rank=rank, world=world,
                      streams=streams)
    start_step = 0
    if state is not None:
        try:
            start_step = trainer.load(state, state_path)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        log(f"Resuming experiment '{cfg.experiment_name}' from {state_path} at step {start_step}")
    batches = iter(make_train_loader(cfg, train_set, tokenizer, start_step, rank, world))
    writer = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "config.yaml", dump_yaml(cfg))
        n_params = sum(p.numel() for p in model.parameters())
        log(f"text2sign: {cfg.experiment_name} | preset {cfg.preset} | {n_params / 1e6:.2f}M params | "
            f"{len(train_set)} train clips | vocab {len(tokenizer)} | device {device} | precision "
            f"{precision.name} ({precision.reason}) | compile {trainer.compiled} ({trainer.compile_reason}) | "
            f"world {world} | run folder {out_dir}")
        if cfg.tensorboard:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(out_dir / "tb"))

    def save(step: int) -> None:
        state = trainer.state(step) | dict(config=cfg.to_dict(), tokenizer=tokenizer.state(),
                                           precision=dict(name=precision.name, reason=precision.reason))
        if is_main:
            save_checkpoint(out_dir, state, cfg.keep_checkpoints)

    def write_samples(step: int) -> None:
        if is_main and sample_prompts:
            videos = generate(trainer.ema.module, diffusion, tokenizer, sample_prompts, cfg, seed=cfg.seed)
            paths = save_samples(out_dir / "samples" / f"step_{step:08d}", videos)
            write_text_atomic(out_dir / "samples" / f"step_{step:08d}.txt", "\n".join(sample_prompts) + "\n")
            log(f"samples at step {step}: {paths[0]}")

    stop_signal = []
    for sig in EXIT_SIGNAL:
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

    # --- the loop --------------------------------------------------------------------------------
    metrics = MetricsWindow(cfg, device)
    metrics.reset(time.perf_counter())
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not is_main, dynamic_ncols=True)
    step = start_step
    trainer.net.train()
    while step < cfg.max_steps:
        try:
            record = trainer.step(batches, step)
        except NonFiniteError as exc:
            print(f"error: {exc}; last good checkpoint kept", file=sys.stderr)
            return EXIT_NONFINITE
        step += 1
        metrics.add(record)
        bar.update(1)
        if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
            line = metrics.record(step, record, time.perf_counter(), distributed) | dict(
                precision=precision.name, precision_reason=precision.reason)
            if is_main:
                with open(out_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(line) + "\n")
                for key, value in line.items() if writer else ():
                    if isinstance(value, float):
                        writer.add_scalar(f"train/{key}", value, step)
                bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{line['lr']:.2e}", sps=f"{line['samples_per_s']:.1f}")
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
    trainer.close()

    # --- samples and evaluation at the end -------------------------------------------------------
    if start_step < cfg.max_steps or not (out_dir / "samples" / f"step_{step:08d}.gif").exists():
        write_samples(step)
    if is_main and cfg.eval_at_end and cfg.dataset == "synthetic":
        from evaluation.runner import evaluate_run

        evaluate_run(trainer.ema.module, diffusion, tokenizer, cfg, split="test",
                     json_path=out_dir / "eval_test.json", log=log)
    if writer:
        writer.close()
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
