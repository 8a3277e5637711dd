"""Train the text2sign ViViT diffusion model.

    python main.py --experiment_name demo                       # the default demo (cpu preset)
    python main.py --experiment_name t --preset tiny --max_steps 20
    torchrun --nproc_per_node=2 main.py --experiment_name ddp   # DistributedDataParallel

Running the same experiment name again resumes from its latest checkpoint. Reads top to bottom:
config and limits -> distributed/device -> run folder (locked) and resume state -> data ->
model/trainer -> loop -> samples/eval. Errors are one `error:` line (cli.py: exit 2 bad input, 1
environment, 3 divergence); SIGINT/SIGTERM exit 130/143 at any point, after a checkpoint at the step
boundary inside the loop.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import cli  # stdlib only, so it comes first: see cli.quiet_interrupts

cli.quiet_interrupts(__name__)
import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import (CheckpointError, DivergedError, checkpoint_paths, load_latest, model_config_mismatch,
                        save_checkpoint, write_text_atomic)
from cli import EXIT_NONFINITE, EXIT_SIGNAL, Stopped, StopSignals
from config import dump_yaml, parse_cli
from data import build_dataset, check_dataset, make_train_loader
from data.text import build_tokenizer, tokenizer_from_state, usable_prompt
from diffusion import build_diffusion, build_objective
from limits import check_disk, check_memory
from models import build_model
from pipeline import generate, init_distributed, predict_keypoints, resolve_device, run_dir, save_samples
from run_folder import MetricsLog, RunFolder
from training import MetricsWindow, NonFiniteError, Trainer, choose_precision


def main(argv: list[str], restore_signals: bool = True) -> int:
    """Train; returns the exit code. Signal handlers are put back afterwards, so a caller of main()
    (tests, notebooks) keeps its own Ctrl-C behaviour; the run folder's lock is released. The
    command line passes restore_signals=False: a signal after the decision cannot change it."""
    stop = StopSignals().install()
    try:
        with contextlib.ExitStack() as resources:
            return train(argv, stop, resources)
    except (Exception, Stopped, KeyboardInterrupt) as exc:  # cli.report re-raises what is a bug
        for bar in list(getattr(tqdm, "_instances", ())):  # so the error line stands alone
            bar.close()
        return cli.report(exc)
    finally:
        stop.finish(restore_signals)


def io_failure(exc: OSError, doing: str, path, out_dir) -> tuple[int, str]:
    """(exit code, message) for a failed write of the run (full or read-only disk), naming what is
    still safe."""
    last = checkpoint_paths(out_dir)
    kept = f"the last checkpoint {last[0]} is intact" if last else "no checkpoint was written yet"
    return cli.os_error_code(exc), f"{cli.describe_os_error(exc, doing, path)}; {kept}"


def fail(code: int, message: str, bar=None) -> int:
    """Print one `error:` line (after closing the progress bar, so the line stands alone)."""
    if bar is not None:
        bar.close()
    print(f"error: {cli.one_line(message)}", file=sys.stderr, flush=True)
    return code


def quarantine(path, log) -> None:
    """Rename a checkpoint whose weights produced a non-finite loss out of the run's checkpoints (it
    would stop every resume); kept beside them as *.diverged for inspection."""
    target = path.with_name(path.name + ".diverged")
    os.replace(path, target)
    log(f"WARNING: {path} holds the weights that produced the non-finite loss; renamed to {target.name}")


def kept_note(out_dir) -> str:
    kept = checkpoint_paths(out_dir)
    return f"the last good checkpoint {kept[0]} is kept" if kept else "no checkpoint is kept"


def earlier_state(step: int, out_dir, resumed_at: int | None, is_main: bool, log, distributed: bool):
    """After a non-finite step: the checkpoint that produced it is renamed aside (every resume from
    it would stop here again), and, when the failing step was the first after loading, the
    checkpoint before it is returned, to fall back to once. None: stop the run."""
    produced = out_dir / "checkpoints" / f"ckpt_{step:08d}.pt"
    if is_main and produced.exists():
        quarantine(produced, log)
    if distributed:
        dist.barrier()
    if resumed_at != step:
        return None
    return load_latest(out_dir, "cpu", log=log, before_step=step)


def fall_back(previous, trainer: Trainer, tokenizer, exc: NonFiniteError, log) -> int:
    """Load the checkpoint before the one whose first step was non-finite; returns its step."""
    state, path = previous
    if state["tokenizer"] != tokenizer.state():
        raise CheckpointError(f"{path}: its vocabulary differs from the newer checkpoint's")
    step = trainer.load(state, path)
    log(f"\nWARNING: {exc}, the first step after loading the checkpoint; falling back (once) to {path} at step {step}")
    return step


def set_up_device(cfg, device: torch.device, rank: int):
    """Threads, TF32 on CUDA, the rank's seed; returns the precision policy (training.py)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + rank)
    return choose_precision(cfg, device)


def run_line(cfg, model, num_clips: int, vocab_size: int, device, trainer: Trainer, world: int, out_dir) -> str:
    """The one line a run starts with: what trains, on what, how, and where it writes."""
    return (f"text2sign: {cfg.experiment_name} | preset {cfg.preset} | "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {num_clips} train clips | "
            f"vocab {vocab_size} | device {device} | precision {trainer.precision.name} ({trainer.precision.reason}) | "
            f"compile {trainer.compiled} ({trainer.compile_reason}) | world {world} | run folder {out_dir}")


def log_line(metrics_log: MetricsLog, line: dict, bar) -> None:
    metrics_log.append(line)
    bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{line['lr']:.2e}", sps=f"{line['samples_per_s']:.1f}")


def write_sample_files(out_dir, step: int, model, diffusion, tokenizer, prompts: list[str], cfg, log) -> None:
    """samples/step_N.{gif,mp4}, the pose stage's keypoints as .pose, and the prompts as .txt."""
    videos = generate(model, diffusion, tokenizer, prompts, cfg, seed=cfg.seed)
    poses = predict_keypoints(model, tokenizer, prompts, cfg) if cfg.pose_cond else None
    paths = save_samples(out_dir / "samples" / f"step_{step:08d}", videos, poses=poses, frame_size_px=cfg.frame_size_px)
    write_text_atomic(out_dir / "samples" / f"step_{step:08d}.txt", "\n".join(prompts) + "\n")
    log(f"samples at step {step}: {paths[0]}")


def train(argv: list[str], stop: StopSignals, resources: contextlib.ExitStack) -> int:
    # --- config and limits, before anything is written -------------------------------------------
    cfg, dry_run = parse_cli(argv)
    device = resolve_device(cfg.device)
    if dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    estimate = check_memory(cfg, device)

    # --- distributed, device, precision, seeds (torchrun sets RANK; rank 0 logs and saves) --------
    device, rank, world = init_distributed(device)
    distributed, is_main = world > 1 or dist.is_initialized(), rank == 0
    log = print if is_main else (lambda *a, **k: None)
    precision = set_up_device(cfg, device, rank)

    # --- the run folder (locked while this run writes to it) and the state to resume from --------
    out_dir = run_dir(cfg)
    if is_main:
        check_disk(cfg, estimate)
        resources.enter_context(RunFolder(out_dir))
    state, state_path = load_latest(out_dir, "cpu", log=log) or (None, None)
    if state and (mismatch := model_config_mismatch(state["config"], cfg)):
        raise CheckpointError(f"checkpoint {state_path} was trained with different model settings: " + ", ".join(
            f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in mismatch.items()))

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
    start_step = trainer.load(state, state_path) if state else 0
    if state:
        log(f"Resuming experiment '{cfg.experiment_name}' from {state_path} at step {start_step}")
    batches = iter(make_train_loader(cfg, train_set, tokenizer, start_step, rank, world))
    if is_main:
        try:
            write_text_atomic(out_dir / "config.yaml", dump_yaml(cfg))
            metrics_log = MetricsLog(out_dir / "metrics.jsonl", start_step, cfg.tensorboard and out_dir / "tb" or None)
        except OSError as exc:
            return fail(*io_failure(exc, "cannot write to the run folder", out_dir, out_dir))
        log(run_line(cfg, model, len(train_set), len(tokenizer), device, trainer, world, out_dir))

    def save(step: int) -> None:
        state = trainer.checked_state(step) | dict(config=cfg.to_dict(), tokenizer=tokenizer.state(),
                                                   precision=dict(name=precision.name, reason=precision.reason))
        if is_main:
            save_checkpoint(out_dir, state, cfg.keep_checkpoints)

    def write_samples(step: int) -> None:
        if is_main and sample_prompts:
            write_sample_files(out_dir, step, trainer.ema.module, diffusion, tokenizer, sample_prompts, cfg, log)

    # --- the loop (a signal only sets a flag: the run saves and stops at the step boundary) --------
    metrics = MetricsWindow(cfg, device)
    metrics.reset(time.perf_counter())
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not is_main, dynamic_ncols=True)
    step, resumed_at = start_step, start_step if state else None
    trainer.net.train()
    with stop.deferred():
        while step < cfg.max_steps:
            try:
                record = trainer.step(batches, step)
            except NonFiniteError as exc:
                previous = earlier_state(step, out_dir, resumed_at, is_main, log, distributed)
                if previous is None:
                    return fail(EXIT_NONFINITE, f"{exc}; {kept_note(out_dir)}", bar)
                step, resumed_at = fall_back(previous, trainer, tokenizer, exc, log), None  # once
                del batches
                batches = iter(make_train_loader(cfg, train_set, tokenizer, step, rank, world))
                if is_main:
                    metrics_log.restart(step)
                metrics.reset(time.perf_counter())
                bar.reset(total=cfg.max_steps)
                bar.update(step)
                continue
            step += 1
            metrics.add(record)
            bar.update(1)
            if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
                line = metrics.record(step, record, time.perf_counter(), distributed) | dict(
                    precision=precision.name, precision_reason=precision.reason)
                try:
                    if is_main:
                        log_line(metrics_log, line, bar)
                except OSError as exc:
                    return fail(*io_failure(exc, "cannot append to", metrics_log.path, out_dir), bar)
            # Every rank must agree on stopping at this step (a signal may reach only some of them).
            stopping = torch.tensor(float(bool(stop.received)), device=device)
            if distributed:
                dist.all_reduce(stopping, op=dist.ReduceOp.MAX)
            if stopping.item() or step % cfg.checkpoint_every_steps == 0 or step == cfg.max_steps:
                try:
                    save(step)
                except DivergedError as exc:  # non-finite weights: nothing written, the last good one kept
                    return fail(EXIT_NONFINITE, f"{exc}; {kept_note(out_dir)}", bar)
                except CheckpointError as exc:  # full or read-only disk: the message says what is intact
                    return fail(1, str(exc), bar)
            if stopping.item():
                stop.acknowledged = True
                signum = stop.first or signal.SIGTERM
                log(f"\nstopped by signal {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                    f"run the same command again to resume")
                return EXIT_SIGNAL[signum]
            if cfg.sample_every_steps and step % cfg.sample_every_steps == 0 and step < cfg.max_steps:
                write_samples(step)
    bar.close()
    trainer.close()

    # --- samples and evaluation at the end (a signal stops them at once: the checkpoint is saved) --
    try:
        if start_step < cfg.max_steps or not (out_dir / "samples" / f"step_{step:08d}.gif").exists():
            write_samples(step)
        if is_main and cfg.eval_at_end and cfg.dataset == "synthetic":
            from evaluation.runner import evaluate_run  # the evaluation's imports only when it runs

            evaluate_run(trainer.ema.module, diffusion, tokenizer, cfg, split="test",
                         json_path=out_dir / "eval_test.json", log=log)
    except Stopped as exc:
        log(f"\nstopped by signal {exc} during the final samples and evaluation; the checkpoint at step "
            f"{step} is saved: run the same command again to finish them")
        return exc.exit_code
    except OSError as exc:
        return fail(*io_failure(exc, "cannot write the final samples or evaluation", None, out_dir))
    if is_main:
        metrics_log.close()
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], restore_signals=False))
