"""torchrun + DistributedDataParallel on CPU (gloo, 2 processes, tiny preset).

Both ranks must finish with identical parameters (model and EMA), and the result must equal a
single-process run with the same global batch: main.py draws the diffusion noise for the global
batch and slices it per rank, and StepSampler gives each rank its slice of the same global batch.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import main as train_main
from checkpoint import checkpoint_paths, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
ARGS = ["--preset", "tiny", "--max_steps", str(STEPS), "--num_threads", "1",
        "--num_sample_prompts", "1", "--sampling_steps", "2"]

# Runs main.main under torchrun and dumps this rank's final model and EMA weights, so the test can
# compare ranks (only rank 0 writes checkpoints).
WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    import main
    import training
    seen = {{}}
    unwrap, make_ema = training.unwrap, training.make_ema
    training.unwrap = lambda m: seen.setdefault("model", unwrap(m))
    training.make_ema = lambda *a, **k: seen.setdefault("ema", make_ema(*a, **k))
    code = main.main(sys.argv[2:])
    torch.save(dict(model=seen["model"].state_dict(), ema=seen["ema"].module.state_dict()),
               os.path.join(sys.argv[1], "rank%s.pt" % os.environ["RANK"]))
    sys.exit(code)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, name: str, extra: list[str]) -> subprocess.Popen:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=ROOT))
    dump = tmp_path / f"{name}_ranks"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(worker), str(dump),
           *ARGS, "--experiment_name", name, "--output_dir", str(tmp_path), *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _final_state(run_dir) -> dict:
    state = load_checkpoint(checkpoint_paths(run_dir)[0])
    assert state["step"] == STEPS
    return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two torchrun jobs (grad_accum 1 and 2) in parallel, then the matching single-process runs."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    jobs = {accum: _torchrun(tmp_path, f"ddp_accum{accum}", ["--grad_accum_steps", str(accum)])
            for accum in (1, 2)}
    outputs = {accum: job.communicate(timeout=150)[0] for accum, job in jobs.items()}
    saved, threads = os.environ.pop("RANK", None), torch.get_num_threads()
    try:
        for accum in (1, 2):
            assert train_main.main([*ARGS, "--experiment_name", f"single_accum{accum}", "--output_dir",
                                    str(tmp_path), "--grad_accum_steps", str(accum)]) == 0
    finally:
        torch.set_num_threads(threads)  # --num_threads 1 above set it for this whole process
        if saved is not None:
            os.environ["RANK"] = saved
    return tmp_path, jobs, outputs


@pytest.mark.parametrize("accum", [1, 2])
def test_both_ranks_finish_with_identical_parameters(runs, accum):
    tmp_path, jobs, outputs = runs
    assert jobs[accum].returncode == 0, outputs[accum][-6000:]
    ranks = [torch.load(tmp_path / f"ddp_accum{accum}_ranks" / f"rank{r}.pt") for r in (0, 1)]
    for part in ("model", "ema"):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between ranks"
    assert "world 2" in outputs[accum]  # rank 0 logged the world size once
    assert outputs[accum].count("text2sign: ddp_accum") == 1  # rank-0-only logging


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_equals_single_process_with_same_global_batch(runs, accum):
    tmp_path = runs[0]
    ddp = _final_state(tmp_path / f"ddp_accum{accum}")
    single = _final_state(tmp_path / f"single_accum{accum}")
    ddp_metrics = (tmp_path / f"ddp_accum{accum}" / "metrics.jsonl").read_text().splitlines()
    single_metrics = (tmp_path / f"single_accum{accum}" / "metrics.jsonl").read_text().splitlines()
    assert len(ddp_metrics) == len(single_metrics)
    # Gradients agree to ~1e-7; AdamW turns float noise on a near-zero gradient into a ~1e-4
    # relative difference of that weight after a few steps. The head's conv bias feeds a GroupNorm
    # with one channel per group, which removes it: its true gradient is 0, so AdamW (at the pixel
    # path's 10x LR) walks it by float noise alone, and it changes no output. It is left out.
    no_gradient = {"head.conv.bias"}
    for part in ("model", "ema"):
        for key, value in single[part].items():
            if key in no_gradient:
                continue
            torch.testing.assert_close(ddp[part][key], value, rtol=1e-3, atol=2e-4, msg=f"{part}.{key}")
    for a, b in zip(ddp_metrics, single_metrics):
        a, b = json.loads(a), json.loads(b)
        for key in ("loss", "grad_norm", "loss_q1", "loss_q2", "loss_q3", "loss_q4"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
