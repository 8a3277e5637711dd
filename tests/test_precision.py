"""Precision by hardware (training.choose_precision), autocast in the step, and the bench's two
ceilings (bench_compare.py): CPU only, tiny preset, no timed assertions."""
import json

import pytest
import torch

import bench
import bench_compare
import main as train_main
import training
from bench import BenchTrainer, random_batch
from checkpoint import checkpoint_paths, load_checkpoint
from config import make_config

CPU = torch.device("cpu")


def _cpu(monkeypatch, *, isa="AVX512", amx_permitted=True, onednn=True, **flags):
    """Pretend the CPU has these cpuinfo flags (what torch.cpu.get_capabilities() reports)."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(architecture="x86_64", **flags))
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: amx_permitted)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)


@pytest.mark.parametrize("flags, expected, words", [
    (dict(amx_bf16=True, amx_tile=True, avx512_bf16=True), "bf16", "AMX-BF16"),
    (dict(amx_bf16=True, amx_tile=True, amx_permitted=False), "fp32", "refused"),
    (dict(amx_bf16=True, avx512_bf16=True, amx_permitted=False), "bf16", "refused by the kernel, AVX512-BF16"),
    (dict(avx512_bf16=True, avx512_f=True), "bf16", "AVX512-BF16 dot products"),
    (dict(avx2=True, isa="AVX2"), "fp32", "no bf16 matrix units (AVX2)"),
    (dict(amx_bf16=True, onednn=False), "fp32", "without oneDNN"),
])
def test_auto_precision_follows_the_cpu(monkeypatch, flags, expected, words):
    _cpu(monkeypatch, **flags)
    choice = training.choose_precision(make_config("cpu", dict(precision="auto")), CPU)
    assert choice.name == expected and words in choice.reason and choice.reason.startswith("auto: ")


@pytest.mark.parametrize("asked", ["fp32", "bf16"])
def test_explicit_precision_wins_over_the_hardware(monkeypatch, asked):
    _cpu(monkeypatch, avx2=True, isa="AVX2")
    assert training.choose_precision(make_config("cpu", dict(precision=asked)), CPU).name == asked
    _cpu(monkeypatch, amx_bf16=True)
    assert training.choose_precision(make_config("cpu", dict(precision=asked)), CPU).name == asked


@pytest.mark.parametrize("capability, expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")])
def test_auto_precision_on_cuda_needs_bf16_tensor_cores(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    choice = training.choose_precision(make_config("cpu", dict(precision="auto")), torch.device("cuda"))
    assert choice.name == expected and f"sm_{capability[0]}{capability[1]}" in choice.reason


def test_auto_precision_plans_bf16_for_a_gpu_it_cannot_see(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = training.choose_precision(make_config("cpu", dict(precision="auto")), torch.device("cuda"))
    assert choice.name == "bf16" and "no device" in choice.reason


def test_tiny_preset_is_fp32_on_every_machine():
    assert make_config("tiny").precision == "fp32"


BF16, FP32 = training.Precision("bf16", "test"), training.Precision("fp32", "test")


@pytest.mark.parametrize("asked, device, precision, steps, expected", [
    ("auto", "cpu", BF16, 1100, "blocks"),  # the demo on a CPU with bf16 units
    ("auto", "cpu", FP32, 1100, "off"),  # fp32 CPU: the gain is about the compile time
    ("auto", "cpu", BF16, 100, "off"),  # too short to pay the compile
    ("auto", "cuda", BF16, 1100, "off"),  # not measured on CUDA: explicit only
    ("on", "cpu", FP32, 10, "blocks"),
    ("on", "cuda", BF16, 10, "model"),
    ("off", "cpu", BF16, 1100, "off"),
])
def test_compile_choice(asked, device, precision, steps, expected):
    cfg = make_config("cpu", dict(compile=asked, max_steps=steps))
    mode, reason = training.choose_compile(cfg, torch.device(device), precision)
    assert mode == expected and reason


def test_compile_accepts_the_old_booleans():
    assert make_config("cpu", dict(compile=True)).compile == "on"
    assert make_config("cpu", dict(compile=False)).compile == "off"
    assert make_config("gpu").compile == "on" and make_config("cpu").compile == "auto"


def _linear_output_dtypes(model: torch.nn.Module) -> tuple[list, list]:
    """Forward hooks on every Linear: the dtypes they emit (from whichever stream thread runs them)."""
    seen, handles = [], []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(lambda m, i, out: seen.append(out.dtype)))
    return seen, handles


@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_runs_under_autocast_and_keeps_fp32_state(precision, streams):
    cfg = make_config("tiny", dict(precision=precision, cpu_streams=streams))
    trainer = BenchTrainer(cfg, CPU, 20)
    assert trainer.precision.name == precision
    seen, handles = _linear_output_dtypes(trainer.model)
    trainer.step(random_batch(cfg, cfg.batch_size, 20))
    for h in handles:
        h.remove()
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    # Every projection of the forward ran at the chosen precision, in each stream's thread too.
    assert len(seen) > 20 and set(seen) == {want}, set(seen)
    tr = trainer.trainer
    # Autocast only: weights, gradients, optimizer state and EMA stay fp32.
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in trainer.model.parameters() if p.grad is not None)
    assert all(t.dtype == torch.float32 for s in tr.optimizer.state.values() for k, t in s.items() if k != "step")
    assert all(t.dtype == torch.float32 for t in tr.ema.module.state_dict().values() if t.is_floating_point())
    tr.close()


def test_main_records_the_choice_and_keeps_checkpoints_fp32(tmp_path, capsys):
    args = ["--preset", "tiny", "--experiment_name", "bf", "--output_dir", str(tmp_path), "--precision", "bf16",
            "--max_steps", "2", "--log_every_steps", "1", "--checkpoint_every_steps", "2"]
    assert train_main.main(args) == 0
    assert "precision bf16 (asked for in the config)" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "bf" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["precision"], r["precision_reason"]) for r in records] == [("bf16", "asked for in the config")] * 2
    state = load_checkpoint(checkpoint_paths(tmp_path / "bf")[0])
    assert state["precision"] == dict(name="bf16", reason="asked for in the config")
    for key in ("model", "ema"):
        assert all(t.dtype == torch.float32 for t in state[key].values() if t.is_floating_point())


def test_mfu_is_against_the_ceiling_of_the_precision_used():
    sizes = dict(fp32=64, bf16=64)
    machine = bench_compare.machine_ceilings(dict(fp32=[100.0, 120.0, 110.0], bf16=[900.0, 1100.0]), sizes)
    assert machine["fp32_gflops"] == 110.0 and machine["bf16_gflops"] == 1000.0
    assert machine["best_precision"] == "bf16"
    fp32 = bench_compare.mfu_fields(55.0, "fp32", machine)
    assert fp32["mfu"] == pytest.approx(0.5) and fp32["mfu_ceiling"] == "fp32"
    assert fp32["mfu_best"] == pytest.approx(0.055) and fp32["mfu_best_ceiling"] == "bf16"
    bf16 = bench_compare.mfu_fields(200.0, "bf16", machine)
    assert bf16["mfu"] == pytest.approx(0.2) == bf16["mfu_best"] and bf16["mfu_ceiling"] == "bf16"
    # A machine whose bf16 is emulated: fp32 is the best ceiling.
    slow = bench_compare.machine_ceilings(dict(fp32=[100.0], bf16=[1.0]), sizes)
    assert bench_compare.mfu_fields(50.0, "bf16", slow) == dict(mfu=50.0, mfu_ceiling="bf16", mfu_best=0.5,
                                                               mfu_best_ceiling="fp32")


def test_bench_compare_precision_writes_both_figures(tmp_path):
    path = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # --set precision bf16: the default path runs bf16, the comparison's other side fp32
        assert bench.main(["--preset", "tiny", "--quick", "--threads", "1", "--skip", "sample,scaling",
                           "--compare_precision", "--set", "precision", "bf16", "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(path.read_text())
    machine, train, compare = result["machine"], result["train"], result["compare"]
    assert machine["fp32_gflops"] > 0 and machine["bf16_gflops"] > 0
    assert train["precision"] == "bf16" and train["mfu_ceiling"] == "bf16"
    assert train["mfu"] == pytest.approx(train["achieved_gflops"] / machine["bf16_gflops"])
    best = max(machine["fp32_gflops"], machine["bf16_gflops"])
    assert train["mfu_best"] == pytest.approx(train["achieved_gflops"] / best)
    eager, default = compare["fp32_eager"], compare["default"]
    assert eager["precision"] == "fp32" and eager["compile"] == "off" and default["precision"] == "bf16"
    assert eager["samples_per_s"] > 0 and default["samples_per_s"] > 0
    assert eager["mfu"] == pytest.approx(eager["achieved_gflops"] / machine["fp32_gflops"])
    assert default["mfu"] == pytest.approx(default["achieved_gflops"] / machine["bf16_gflops"])
    assert compare["default_over_fp32_eager"] > 0
    assert set(machine["cpu_flags"]) <= {"amx_bf16", "amx_tile", "amx_fp16", "avx512_bf16", "avx512_fp16",
                                         "avx512_f", "avx2", "bf16"}


def test_blocks_compile_once_across_text_widths_and_the_checkpoint_probe(monkeypatch):
    """One graph of the compiled blocks for the whole run. The loader pads each batch's text to its own
    longest caption: with the width static in the first graph, the second width recompiled (and the
    two streams both did; docs/performance.md, round 16). And the checkpoint's finite-output probe
    (no_grad, eval) runs eager: through the compiled blocks it would compile another graph at every
    run's first checkpoint (~8 s on the demo; round 11). Counted with dynamo's own counter."""
    from torch._dynamo.testing import CompileCounter
    from models.architectures.blocks import Block
    counter = CompileCounter()
    # training.compile_blocks itself, with dynamo's counting backend in place of inductor's
    monkeypatch.setattr(Block, "compile", lambda self, **options: torch.nn.Module.compile(self, backend=counter))
    torch._dynamo.reset()
    try:
        cfg = make_config("tiny", dict(compile="on", cpu_streams=2))
        bench_trainer = BenchTrainer(cfg, CPU, 20)
        trainer = bench_trainer.trainer
        assert trainer.compiled == "blocks"
        widths = (8, 5, 6, 8)  # tokens per batch, as the loader pads them
        for step, width in enumerate(widths):
            trainer.step(iter([random_batch(cfg, cfg.batch_size, 20, text_len=width)]), step)
            if step == 1:
                assert trainer.checked_state(step)["step"] == step
        assert counter.frame_count == 1, counter.frame_count
        trainer.close()
    finally:
        torch._dynamo.reset()
