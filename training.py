"""The training step, one implementation for main.py, bench.py and quick_test_fixes.py.

Owns: the learning-rate schedule (a pure function of the step), parameter groups, the optimizer and
EMA builders, the precision choice, `Trainer.step` (each micro-batch's forward and backward through
the CPU streams or DDP, gradient clipping, the non-finite check, the optimizer and EMA updates), and
`MetricsWindow`, which turns steps into the logged record.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel

from checkpoint import FORMAT_VERSION, DivergedError, gather_rng_states, load_weights, rng_state, set_rng_state, unwrap
from diffusion.objective import DenoisingLoss, LossTerms
from integrity import nonfinite_tensor
from streams import StreamedBackward


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio: a pure function of the step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# The full-resolution pixel path: the head's convs, the refine path and the output scale.
PIXEL_PATH_PREFIXES = ("head.", "refine.", "output_scale")


def param_groups(model: torch.nn.Module, weight_decay: float, pixel_lr_mult: float = 1.0) -> list[dict]:
    """No weight decay on biases, norms, embeddings, positions and scalars (the usual GPT/DiT split).

    With pixel_lr_mult != 1 the pixel path gets its own two groups whose LR is that multiple of the
    schedule's (`lr_mult`, applied by Trainer.step). Why: its output at low noise is the noise to
    remove, x_t's high frequencies times ~1/(2σ) (gains of 10 and more at t = 0), and AdamW moves a
    weight by at most ~lr per step, so at the shared LR those convs stay too small in a short run and
    leave grain (docs/experiments.md, row 56). With 1, the two groups of earlier checkpoints."""
    # (pixel, decays) in the order the groups are saved: the two plain groups first, as before the key
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
        (False, True): [], (False, False): [], (True, True): [], (True, False): []}
    for name, p in model.named_parameters():
        decays = p.dim() >= 2 and "embed.weight" not in name and "pos" not in name
        groups[(pixel_lr_mult != 1.0 and name.startswith(PIXEL_PATH_PREFIXES), decays)].append(p)
    return [dict(params=params, weight_decay=weight_decay if decays else 0.0, lr_mult=pixel_lr_mult if pixel else 1.0)
            for (pixel, decays), params in groups.items() if params]


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW, fused on every device (torch's fused CPU kernel: one pass over all tensors)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.pixel_lr_mult), lr=cfg.lr,
                             betas=(0.9, cfg.adam_beta2), fused=True)


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """EMA with the diffusers warm-up: decay_n = min(decay, (1 + n) / (10 + n)); starts as an exact copy.

    One foreach lerp over all tensors per step instead of a per-tensor avg_fn (docs/performance.md,
    round 3). The warm-up decay stays a tensor, so CUDA never syncs.
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


@dataclass(frozen=True)
class Precision:
    """The autocast the step runs under: `name` fp32 | bf16, and why it was chosen."""

    name: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, torch.bfloat16, enabled=self.bf16)


def cpu_bf16_units() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 matrices in hardware that oneDNN uses, and what was found.

    Asked of torch, not of the CPU's name: its cpuinfo flags (`torch.cpu.get_capabilities()`), the
    kernel's permission to use the AMX tiles (`torch.cpu._init_amx()`, what inductor asks too), and
    whether oneDNN is built in and enabled. Two kinds count, since each made the cpu preset's step
    faster than fp32: AMX-BF16 tiles (Intel Xeon) and AVX512-BF16 dot products (AMD EPYC); on AVX2
    alone bf16 matmuls are emulated and slower than fp32 (docs/performance.md, rounds 6 and 10).
    """
    caps = torch.cpu.get_capabilities()
    isa = torch.backends.cpu.get_cpu_capability()
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False, f"CPU ({isa}) without oneDNN in this torch: fp32"
    amx = bool(caps.get("amx_bf16"))
    if amx and torch.cpu._init_amx():
        return True, f"CPU with AMX-BF16 matrix units ({isa}, oneDNN)"
    if caps.get("avx512_bf16"):
        refused = "AMX-BF16 refused by the kernel, " if amx else ""
        return True, f"CPU with {refused}AVX512-BF16 dot products ({isa}, oneDNN)"
    if amx:
        return False, f"CPU has AMX-BF16 but the kernel refused its tiles ({isa}): fp32"
    return False, f"CPU with no bf16 matrix units ({isa}): fp32"


def choose_precision(cfg, device: torch.device) -> Precision:
    """`precision` auto -> bf16 autocast on CUDA with bf16 tensor cores (sm_80+) and on CPUs with
    AMX-BF16 or AVX512-BF16 (`cpu_bf16_units`), fp32 elsewhere; fp32 / bf16 as asked. Autocast only:
    parameters, gradients, optimizer state, EMA and checkpoints stay fp32 whatever the choice."""
    if cfg.precision != "auto":
        return Precision(cfg.precision, "asked for in the config")
    if device.type == "cuda":
        if not torch.cuda.is_available():  # planning for a GPU from a machine without one (limits.py)
            return Precision("bf16", "auto: CUDA (no device here to ask; assumed sm_80 or newer)")
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return Precision("bf16", f"auto: CUDA sm_{major}{minor} has bf16 tensor cores")
        return Precision("fp32", f"auto: CUDA sm_{major}{minor} has no bf16 tensor cores")
    if device.type == "cpu":
        native, found = cpu_bf16_units()
        return Precision("bf16" if native else "fp32", f"auto: {found}")
    return Precision("fp32", f"auto: {device.type}")


# `compile: auto` compiles a bf16 CPU run at least this long: the first step's compile (cold inductor
# cache) took about as long as ~470 bf16 steps save (docs/performance.md, round 6).
COMPILE_MIN_STEPS = 500


def choose_compile(cfg, device: torch.device, precision: Precision) -> tuple[str, str]:
    """What the step compiles: "blocks" (CPU, regional: `compile_blocks`), "model" (CUDA: the whole
    denoiser) or "off", and why. `compile` auto -> the blocks of a bf16 CPU run of at least
    COMPILE_MIN_STEPS steps, where fusing the elementwise work pays its compile time; off elsewhere
    (an fp32 CPU step saves ~11%, about its compile time over a demo; CUDA is not measured yet)."""
    if cfg.compile == "off":
        return "off", "off in the config"
    mode = "blocks" if device.type == "cpu" else "model"
    if cfg.compile == "on":
        return mode, "on in the config"
    if device.type != "cpu" or not precision.bf16:
        return "off", f"auto: {device.type} {precision.name} step"
    if cfg.max_steps < COMPILE_MIN_STEPS:
        return "off", f"auto: {cfg.max_steps} steps < {COMPILE_MIN_STEPS} do not pay the compile time"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as exc:  # inductor's CPU backend needs a C++ compiler
        return "off", f"auto: no C++ compiler for inductor ({type(exc).__name__})"
    return "blocks", f"auto: bf16 CPU step, {cfg.max_steps} steps"


def compile_blocks(model: torch.nn.Module, streams: int) -> int:
    """torch.compile every transformer `Block` of `model` in place (regional compilation: the blocks
    share their code, so one compile serves all of them, in a fraction of a whole-model compile's
    time); returns how many. State-dict keys are unchanged.

    CPU options: inductor's C++ wrapper (`cpp_wrapper`) releases the GIL for the whole compiled
    graph, so two CPU streams run their compiled blocks at the same time; with the default Python
    wrapper each fused kernel holds the GIL and the streams take turns (docs/performance.md, round 6).
    With streams, each kernel gets one OpenMP thread, like the eager ops in a stream. The text's
    width is dynamic from the first graph (`_text_width_dynamic`), so a run compiles the blocks once.
    """
    from models.architectures.blocks import Block, TextEncoder

    options = {"cpp_wrapper": True, **({"cpp.threads": 1} if streams > 1 else {})}
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(options=options)
    for text in (m for m in model.modules() if isinstance(m, TextEncoder)):
        text.register_forward_hook(_text_width_dynamic)
    return len(blocks)


def _text_width_dynamic(module: torch.nn.Module, args, out: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Mark the text's width (ctx and its mask, dim 1) dynamic before the blocks see it: each batch
    is padded to its own longest caption, so a static first graph was compiled, then recompiled
    (twice, by the two streams) as soon as the width changed at step 2 (docs/performance.md, round 16).
    A hook on the eager text encoder: inside the compiled block the mark cannot be made."""
    for tensor in out:
        torch._dynamo.maybe_mark_dynamic(tensor, 1)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient norm, found before the optimizer step (nothing was updated)."""

    def __init__(self, step: int, loss: float, grad_norm: float, indices: list):
        super().__init__(f"non-finite loss {loss} or gradient norm {grad_norm} at step {step}, batch "
                         f"indices {indices}; no optimizer step taken")
        self.step, self.loss, self.grad_norm, self.indices = step, loss, grad_norm, indices


@dataclass
class StepRecord:
    """What one optimizer step reports: the step's mean loss (device tensor), the gradient norm
    before clipping, the LR, and the loss terms of each micro-batch slice this rank computed."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    terms: list[LossTerms] = field(default_factory=list)


def batch_cond(batch: dict[str, Any], pose_cond: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's conditioning keywords from a batch: the ground-truth skeleton for the pose stage."""
    if not pose_cond:
        return {}
    return dict(pose_xy=batch["pose_xy"].to(device), pose_visible=batch["pose_visible"].to(device))


@torch.no_grad()
def output_is_finite(model: torch.nn.Module, cfg, device: torch.device, precision: Precision) -> bool:
    """One forward of `model` (eval mode, then back) on a fixed random clip and caption. Draws from
    its own generator, so the run's random streams are untouched."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px, generator=gen).to(device)
    t = torch.full((1,), cfg.num_timesteps // 2, dtype=torch.long, device=device)
    tokens = torch.full((1, 1), 2, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:  # eager: compiled blocks would compile a no_grad graph for this probe (performance.md, round 11)
        with precision.autocast(device), torch.compiler.set_stance("force_eager"):
            out = model(x, t, tokens, torch.ones_like(tokens, dtype=torch.bool))
    finally:
        model.train(was_training)
    return bool(torch.isfinite(out).all())


class Trainer:
    """Model, EMA, optimizer and the step that updates them, as every entry point takes it.

    Diffusion draws (t, noise, text dropout) come from one generator with the same seed on every
    rank: each rank draws the global micro-batch and keeps its slice, so N ranks == 1 process."""

    def __init__(self, cfg, model: torch.nn.Module, objective: DenoisingLoss, device: torch.device,
                 precision: Precision, *, rank: int = 0, world: int = 1, streams: int = 1):
        self.cfg, self.model, self.objective, self.device, self.precision = cfg, model, objective, device, precision
        self.rank, self.world, self.distributed = rank, world, world > 1 or dist.is_initialized()
        self.ema = make_ema(model, cfg.ema_decay)
        self.optimizer = make_optimizer(model, cfg)
        net = DDP(model) if self.distributed else model
        self.compiled, self.compile_reason = choose_compile(cfg, device, precision)
        if self.compiled == "blocks":  # after make_ema: the EMA copy, which samples and evaluates, stays eager
            compile_blocks(model, streams)
        self.net = torch.compile(net) if self.compiled == "model" else net
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        # The first step compiles: its streams run one after the other, so the second finds the code
        # the first compiled (dynamo's compile lock serialises two compiles but does not skip the second).
        self.backward = StreamedBackward(model, streams, serial_calls=1 if self.compiled == "blocks" else 0)
        self.micro = cfg.batch_size // (cfg.grad_accum_steps * world)

    def loss_fn(self, x0: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                draws: tuple[torch.Tensor, ...], cond: dict[str, torch.Tensor]) -> Callable[[slice], LossTerms]:
        """loss_fn(part) for StreamedBackward: the objective on a slice of one batch and of its pre-drawn
        (t, noise, drop), so the draws do not depend on how the batch is split."""
        def run(part: slice) -> LossTerms:
            # autocast is thread-local: entered here, inside whichever stream runs the slice.
            with self.precision.autocast(self.device):
                return self.objective(self.net, x0[part], tokens[part], mask[part],
                                      tuple(d[part] for d in draws), {k: v[part] for k, v in cond.items()})
        return run

    def step(self, batches: Iterator[dict], step: int) -> StepRecord:
        """One optimizer step on the next grad_accum_steps micro-batches. Raises NonFiniteError before
        the optimizer step (parameters, EMA and optimizer untouched) on a non-finite loss or gradient."""
        cfg = self.cfg
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms, indices = torch.zeros((), device=self.device), [], []
        for micro_step in range(cfg.grad_accum_steps):
            batch = next(batches)
            x0 = batch["video"].to(self.device, non_blocking=True)
            tokens, mask = batch["tokens"].to(self.device), batch["token_mask"].to(self.device)
            indices += batch["index"]
            t, noise, drop = self.objective.draw((self.micro * self.world, *x0.shape[1:]), self.generator, self.device)
            part = slice(self.rank * self.micro, (self.rank + 1) * self.micro)
            fn = self.loss_fn(x0, tokens, mask, (t[part], noise[part], drop[part]),
                              batch_cond(batch, cfg.pose_cond, self.device))
            sync = not self.distributed or micro_step == cfg.grad_accum_steps - 1
            with contextlib.nullcontext() if sync else self.net.no_sync():
                result = self.backward(fn, x0.shape[0], scale=1 / cfg.grad_accum_steps)
            loss += result.loss.detach() / cfg.grad_accum_steps
            terms.append(result)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
        if self.distributed:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise NonFiniteError(step, loss.item(), grad_norm.item(), indices)
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        return StepRecord(loss, grad_norm, lr, terms)

    def state(self, step: int) -> dict[str, Any]:
        """The trainer's part of a checkpoint: weights, EMA, optimizer, RNG states (every rank's)."""
        return dict(format_version=FORMAT_VERSION, step=step, data_position=step * self.cfg.batch_size,
                    model=unwrap(self.model).state_dict(), ema=self.ema.module.state_dict(),
                    ema_num_updates=int(self.ema.n_averaged), optimizer=self.optimizer.state_dict(),
                    rng=gather_rng_states(self.generator) if self.distributed else rng_state(self.generator))

    def checked_state(self, step: int) -> dict[str, Any]:
        """`state(step)`, or DivergedError when the weights must not be saved over a good checkpoint:
        NaN or inf in them, or finite weights whose output already is (--lr 1e30 leaves ~1e30 after
        one step, and the next step is NaN). Checked on every rank (their weights are the same), so
        under torchrun all stop together."""
        state = self.state(step)
        bad = nonfinite_tensor(state) and "its weights hold NaN or inf"
        for name, net in (("model", self.model), ("EMA", self.ema.module)):
            if not bad and not output_is_finite(net, self.cfg, self.device, self.precision):
                bad = f"the {name}'s output on a probe clip is NaN or inf (finite but diverged weights)"
        if bad:
            raise DivergedError(f"not saving step {step}: {bad}, e.g. a learning rate too high")
        return state

    def load(self, state: dict[str, Any], path) -> int:
        """Restore in the fixed order (RELIABILITY.md rule 4): model and EMA, optimizer, RNG last.
        Returns the step to continue from."""
        load_weights(self.model, state["model"], path)
        load_weights(self.ema.module, state["ema"], path)
        self.ema.n_averaged.fill_(state["ema_num_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        set_rng_state(rng[self.rank] if isinstance(rng, list) else rng, self.generator)
        return int(state["step"])

    def close(self) -> None:
        self.backward.close()


class MetricsWindow:
    """Accumulates steps between two log lines: mean loss, the unweighted loss per timestep quartile
    (`loss_q1` = lowest noise, as guided-diffusion logs it), the auxiliary terms, samples/s.

    Per-step values stay on the device (no host sync per step); `record` reads them once."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.reset(0.0)

    def reset(self, now_s: float) -> None:
        self.loss, self.steps, self.start_s = torch.zeros((), device=self.device), 0, now_s
        self.bucket_sums, self.bucket_counts = torch.zeros(4), torch.zeros(4)
        self.aux_sums: dict[str, torch.Tensor] = {}
        self.kept = torch.zeros((), device=self.device)

    def add(self, record: StepRecord) -> None:
        self.loss += record.loss.detach()
        self.steps += 1
        num_t = self.cfg.num_timesteps
        for terms in record.terms:
            bucket = (terms.t.cpu() * 4 // num_t).clamp(max=3)
            self.bucket_sums.index_add_(0, bucket, terms.per_sample.detach().float().cpu())
            self.bucket_counts.index_add_(0, bucket, torch.ones(len(bucket)))
            for name, value in terms.aux_sums.items():
                self.aux_sums[name] = self.aux_sums.get(name, 0) + value
            self.kept += terms.kept

    def record(self, step: int, record: StepRecord, now_s: float, distributed: bool = False) -> dict[str, float]:
        """The log line for the window ending at `step` (then reset it)."""
        sums, counts = self.bucket_sums, self.bucket_counts
        if distributed:  # per-timestep losses of every rank's samples, not only rank 0's
            both = torch.stack([sums, counts]).to(self.device)
            dist.all_reduce(both)
            sums, counts = both.cpu().unbind(0)
        out = dict(step=step, loss=float(self.loss) / max(1, self.steps), lr=record.lr,
                   grad_norm=float(record.grad_norm),
                   samples_per_s=self.steps * self.cfg.batch_size / max(now_s - self.start_s, 1e-9),
                   **{f"loss_q{q + 1}": float(sums[q] / counts[q].clamp(min=1)) for q in range(4)})
        kept = max(float(self.kept), 1.0)  # this rank's clips that kept their text
        if "pose_mse" in self.aux_sums:  # RMS error of one keypoint coordinate, in pixels
            out["pose_rmse_px"] = (float(self.aux_sums["pose_mse"]) / kept) ** 0.5 * self.cfg.frame_size_px
        for name, value in self.aux_sums.items():
            if name != "pose_mse":
                out[f"{name}_loss"] = float(value) / kept
        self.reset(now_s)
        return out
