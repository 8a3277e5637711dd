"""bench.py runs on the tiny preset and writes the documented JSON (no timing assertions)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_tiny_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    # tiny is the recipe at toy size: the pose stage is on, so its batches carry keypoints too.
    proc = subprocess.run([sys.executable, "bench.py", "--preset", "tiny", "--quick", "--threads", "1",
                           "--profile", "--json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(path.read_text())
    train = result["train"]
    for key in ("samples_per_s", "mfu", "data_wait_share", "flops_per_sample", "peak_memory_mb"):
        assert key in train, key
    assert train["samples_per_s"] > 0 and 0 < train["mfu"] and train["flops_per_sample"] > 0
    assert 0 <= train["data_wait_share"] <= 1
    assert result["sample"]["ddim20_s_per_clip"] > 0 and result["sample"]["ddpm_guided_s_per_clip"] > 0
    assert set(result["scaling"]["frames"]) == {"8", "16", "32", "64"}
    assert result["machine"]["fp32_gflops"] > 0
    assert "MFU" in proc.stdout
    # --profile: op-class shares of the profiled self time (the matmul and conv op names match the
    # profiler's, or their shares would be 0), and the top ops
    prof = train["profile"]
    assert 0 < prof["matmul_share"] < 1 and 0 < prof["conv_share"] < 1
    assert prof["matmul_share"] + prof["conv_share"] < 1
    assert all(o["calls_per_step"] > 0 and o["ms_per_step"] > 0 for o in prof["top_ops"])
    shares = [o["share"] for o in prof["top_ops"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
    assert "profile" in proc.stdout
