"""What scripts/chaos.py runs its faults with: a run started as `python main.py` or as a fork (Proc),
the uninterrupted reference and the comparison with it (Chaos), one table row per fault (Row)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from checkpoint import checkpoint_paths, load_checkpoint  # noqa: E402
from run_folder import read_metrics  # noqa: E402

COMPARED = ("step", "loss", "lr", "grad_norm", "loss_q1", "loss_q2", "loss_q3", "loss_q4")


@dataclass
class Row:
    fault: str
    trials: int = 0
    survived: int = 0
    lost: int = 0
    redone: int = 0
    equal: bool | None = None
    note: str = ""
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.skipped or (self.trials > 0 and self.survived == self.trials and self.lost == 0 and bool(self.equal))


@dataclass
class Proc:
    pid: int
    log: Path
    popen: subprocess.Popen | None = None
    code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            if self.popen is not None:
                self.code = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout_s: float = 600.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.02)
        return self.code

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Chaos:
    out: Path
    spawn: str
    max_steps: int
    every: int
    eval_clips: int
    eval_all: bool  # every run ends with the evaluation; else only the reference and the evaluation fault's
    rng: random.Random
    runs: int = 0
    reference: dict = field(default_factory=dict)

    def evaluates(self, name: str) -> bool:
        return self.eval_all or name == "reference" or name.startswith("evalterm")

    def args(self, name: str, output_dir: Path | None = None) -> list[str]:
        return ["--preset", "tiny", "--num_threads", "1", "--output_dir", str(output_dir or self.out),
                "--experiment_name", name, "--max_steps", str(self.max_steps), "--checkpoint_every_steps",
                str(self.every), "--log_every_steps", "1", "--eval_at_end", str(self.evaluates(name)).lower(),
                "--num_eval_samples", str(self.eval_clips)]

    def start(self, name: str, output_dir: Path | None = None) -> Proc:
        self.runs += 1
        log = self.out / "logs" / f"{self.runs:03d}_{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = self.args(name, output_dir)
        if self.spawn == "exec":
            with open(log, "w") as fh:
                popen = subprocess.Popen([sys.executable, "-u", "main.py", *argv], cwd=ROOT, stdout=fh,
                                         stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            return Proc(popen.pid, log, popen)
        import main  # imported once, before the first fork (it runs no torch op on import)

        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: what `python main.py ARGS` does, output to the log
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout.reconfigure(line_buffering=True)
                code = main.main(argv, restore_signals=False)
            except BaseException:  # a bug: its traceback goes to the log
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return Proc(pid, log)

    def run_dir(self, name: str, output_dir: Path | None = None) -> Path:
        return (output_dir or self.out) / name

    def wait_for(self, proc: Proc, ready, timeout_s: float = 300.0) -> bool:
        """Poll until ready() (True) or the process exits (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return True
            if proc.poll() is not None:
                return bool(ready())
            time.sleep(0.02)
        return False

    def last_logged(self, run: Path) -> int:
        rows = read_metrics(run / "metrics.jsonl")
        return rows[-1]["step"] if rows else 0

    def compare(self, run: Path) -> tuple[bool, int, str]:
        """(equal to the reference, steps lost, what differs)."""
        paths = checkpoint_paths(run)
        if not paths:
            return False, self.max_steps, "no checkpoint"
        final = load_checkpoint(paths[0])
        steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
        lost = (self.max_steps - final["step"]) + len(set(range(1, self.max_steps + 1)) - set(steps)) + \
            (len(steps) - len(set(steps)))
        ref = self.reference
        diffs = [k for k in ("model", "ema", "optimizer") if not same(final[k], ref["state"][k])]
        if [{k: r[k] for k in COMPARED} for r in read_metrics(run / "metrics.jsonl")] != ref["metrics"]:
            diffs.append("metrics")
        evaluation = run / "eval_test.json"
        if self.evaluates(run.name) and (not evaluation.exists() or json.loads(evaluation.read_text()) != ref["eval"]):
            diffs.append("evaluation")
        return not diffs, lost, ", ".join(diffs)

    def record_reference(self) -> None:
        """The uninterrupted run: its final state and the times of its phases (first logged step,
        last logged step, exit), which place the kills."""
        start = time.monotonic()
        proc = self.start("reference")
        run = self.run_dir("reference")
        self.wait_for(proc, lambda: self.last_logged(run) >= 1)
        first_s = time.monotonic() - start
        self.wait_for(proc, lambda: self.last_logged(run) >= self.max_steps)
        last_s = time.monotonic() - start
        if proc.wait() != 0:
            sys.exit(f"the uninterrupted run failed (exit {proc.code}); see {proc.log}")
        self.reference = dict(phases_s=(first_s, last_s, time.monotonic() - start),
                              state=load_checkpoint(checkpoint_paths(run)[0]),
                              metrics=[{k: r[k] for k in COMPARED} for r in read_metrics(run / "metrics.jsonl")],
                              eval=json.loads((run / "eval_test.json").read_text()))


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def resumed_at(log_text: str) -> int:
    for line in log_text.splitlines():
        if line.startswith("Resuming experiment") and " at step " in line:
            return int(line.rsplit(" at step ", 1)[1].split()[0])
    return 0


