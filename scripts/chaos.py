"""Chaos run: the tiny preset through the faults of a hostile week (issue 21), against an
uninterrupted run of the same command.

    python scripts/chaos.py                 # >= 20 kill -9s, every fault, `python main.py` per run
    python scripts/chaos.py --quick         # 3 kills, 8-step runs, forked from this process

Faults: `kill -9` at random moments (each run is restarted with the same command until it
finishes), three kinds of checkpoint corruption of the latest checkpoint after a SIGTERM
(truncation, 1000 random bytes at 25% of the file, a foreign pickle that would run code if
unpickled), a SIGTERM during the final evaluation, a second run started on the same folder, and a
disk that fills up during the run (a small tmpfs; skipped with a note where mounting is refused).
Every run ends with the final samples and the sign-fidelity evaluation (eval_at_end).

Prints one table: fault, trials, survived, steps lost (missing or repeated in the final metrics, or
short of max_steps), steps redone (work repeated after a kill, not a loss), and whether the final
model equals the uninterrupted run's bit for bit (weights, EMA, optimizer state, every logged
loss/LR/grad-norm, the evaluation JSON). Exit code 0 only when every fault was survived with nothing
lost and the final model equal.

--spawn fork (the --quick default) starts each run as a fork of this process, which has torch
imported already but has run no torch op (so no OpenMP pool is forked): a separate process, killed
the same way, without a torch import per run. --spawn exec runs `python -u main.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from checkpoint import checkpoint_paths, load_checkpoint  # noqa: E402
from run_folder import read_metrics  # noqa: E402

COMPARED = ("step", "loss", "lr", "grad_norm", "loss_q1", "loss_q2", "loss_q3", "loss_q4")
MARKER = "FOREIGN_PICKLE_RAN"


class Evil:
    """What a foreign pickle may hold: unpickling it would run a command (it must never be)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


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
    rng: random.Random
    runs: int = 0
    reference: dict = field(default_factory=dict)

    def args(self, name: str, output_dir: Path | None = None) -> list[str]:
        return ["--preset", "tiny", "--num_threads", "1", "--output_dir", str(output_dir or self.out),
                "--experiment_name", name, "--max_steps", str(self.max_steps), "--checkpoint_every_steps",
                str(self.every), "--log_every_steps", "1", "--eval_at_end", "true", "--num_eval_samples",
                str(self.eval_clips)]

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
        if not evaluation.exists() or json.loads(evaluation.read_text()) != ref["eval"]:
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


def finish(c: Chaos, row: Row, run: Path, note: str = "") -> None:
    equal, lost, diff = c.compare(run)
    row.equal = equal if row.equal is None else (row.equal and equal)
    row.lost += lost
    if diff or note:
        row.note = "; ".join(x for x in (row.note, note, f"differs: {diff}" if diff else "") if x)


PHASES = ("start-up", "training", "training", "training", "final samples and evaluation")


def wait_for_kill_moment(c: Chaos, proc: Proc, run: Path) -> str:
    """Wait for a random moment of `proc`'s life, placed by its own progress (not by the clock, which
    a loaded machine stretches): in its start-up, during a random training step still ahead of it, or
    in its final samples and evaluation (1 : 3 : 1). Returns the phase."""
    first_s, last_s, total_s = c.reference["phases_s"]
    phase = c.rng.choice(PHASES)
    done = c.last_logged(run)
    if phase == "training" and done >= c.max_steps - 1:
        phase = PHASES[-1]
    if phase == "start-up":
        c.wait_for(proc, lambda: False, timeout_s=c.rng.uniform(0.05, first_s))
    elif phase == "training":
        target = c.rng.randint(done + 1, c.max_steps - 1)
        c.wait_for(proc, lambda: c.last_logged(run) >= target)
        c.wait_for(proc, lambda: False, timeout_s=c.rng.uniform(0, (last_s - first_s) / c.max_steps))
    else:
        c.wait_for(proc, lambda: c.last_logged(run) >= c.max_steps)
        c.wait_for(proc, lambda: False, timeout_s=c.rng.uniform(0, total_s - last_s))
    return phase


def kills(c: Chaos, count: int) -> Row:
    """Runs killed with SIGKILL at a random moment and restarted with the same command (the
    restart too may be killed) until `count` kills; the last restart of each run goes to the end."""
    row, episode, survived, phases = Row("kill -9 at random moments"), 0, 0, {p: 0 for p in PHASES}
    while row.trials < count:
        episode += 1
        name, killed, pending = f"kill{episode}", 0, None
        run = c.run_dir(name)
        proc = c.start(name)
        while row.trials < count:
            phase = wait_for_kill_moment(c, proc, run)
            if pending is not None and "text2sign:" in proc.text():  # printed once resumed
                row.redone += max(0, pending - resumed_at(proc.text()))
                pending = None
            if proc.poll() is not None:
                break  # it finished first
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            row.trials += 1
            killed += 1
            phases[phase] += 1
            pending = c.last_logged(run) if pending is None else pending
            proc = c.start(name)  # the same command again
        code = proc.wait()
        if pending is not None:
            row.redone += max(0, pending - resumed_at(proc.text()))
        equal_before = row.equal
        finish(c, row, run)
        if code == 0 and row.equal and equal_before is not False:
            survived += killed
        elif code != 0:
            row.note = "; ".join(x for x in (row.note, f"{name}: a restart exited {code} (see {proc.log})") if x)
    row.survived = survived
    row.note = "; ".join(x for x in (f"{episode} runs; kills in " + ", ".join(
        f"{p}: {n}" for p, n in phases.items() if n), row.note) if x)
    return row


def stopped_run(c: Chaos, name: str) -> tuple[Path, int]:
    """A run stopped by SIGTERM after two checkpoints: (run folder, the step it stopped at)."""
    proc = c.start(name)
    run = c.run_dir(name)
    c.wait_for(proc, lambda: c.last_logged(run) > 2 * c.every)
    os.kill(proc.pid, signal.SIGTERM)
    if proc.wait() != 143:
        raise SystemExit(f"{name}: SIGTERM did not stop the run with 143 (exit {proc.code}; see {proc.log})")
    return run, load_checkpoint(checkpoint_paths(run)[0])["step"]


def corruption(c: Chaos) -> list[Row]:
    base, stopped = stopped_run(c, "corrupt_base")
    rows = []
    for kind in ("truncation", "garbled tensor bytes", "foreign pickle"):
        name = "corrupt_" + kind.split()[0]
        run = c.run_dir(name)
        shutil.copytree(base, run)
        latest = checkpoint_paths(run)[0]
        data = latest.read_bytes()
        marker = c.out / MARKER
        if kind == "truncation":
            latest.write_bytes(data[: int(len(data) * 0.4)])
        elif kind == "garbled tensor bytes":
            at = len(data) // 4
            latest.write_bytes(data[:at] + os.urandom(1000) + data[at + 1000:])
        else:
            latest.write_bytes(pickle.dumps({"step": stopped, "model": Evil(marker)}, protocol=2))
        row = Row(f"checkpoint corruption: {kind}", trials=1)
        proc = c.start(name)
        code = proc.wait()
        text = proc.text()
        warned = "WARNING:" in text and latest.name in text
        row.redone = stopped - resumed_at(text)
        if code == 0 and warned and not marker.exists():
            row.survived = 1
        else:
            row.note = f"exit {code}, warned {warned}, foreign code ran {marker.exists()} (see {proc.log})"
        finish(c, row, run)
        rows.append(row)
    return rows


def sigterm_in_evaluation(c: Chaos, attempts: int = 3) -> Row:
    row = Row("SIGTERM during the final evaluation")
    for attempt in range(attempts):
        name = f"evalterm{attempt}"
        proc = c.start(name)
        caught = c.wait_for(proc, lambda: "evaluating" in proc.text())
        if caught and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait()
        if code == 0:  # finished before the signal landed: try again
            continue
        row.trials = 1
        stopped = code == 143 and "during the final samples and evaluation" in proc.text()
        again = c.start(name)
        if stopped and again.wait() == 0 and "Traceback" not in proc.text():
            row.survived = 1
        else:
            row.note = f"exit {code}, then {again.code} (see {proc.log})"
        finish(c, row, c.run_dir(name))
        return row
    row.note = f"the evaluation ended before the signal in {attempts} attempts"
    return row


def concurrent(c: Chaos) -> Row:
    row = Row("second run on the same folder", trials=1)
    first = c.start("concurrent")
    run = c.run_dir("concurrent")
    c.wait_for(first, lambda: c.last_logged(run) >= 1)
    second = c.start("concurrent")
    code = second.wait()
    refused = code == 2 and f"in use by process {first.pid}" in second.text()
    if first.wait() == 0 and refused:
        row.survived = 1
    else:
        row.note = f"second exit {code} (refused {refused}), first exit {first.code} (see {second.log})"
    finish(c, row, run)
    return row


def full_disk(c: Chaos, size: str = "24m") -> Row:
    row = Row("disk full during the run")
    disk = c.out / "tmpfs"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True,
                           text=True)
    if mount.returncode:
        row.skipped, row.note = True, f"skipped: cannot mount a tmpfs here ({mount.stderr.strip()})"
        return row
    try:
        row.trials = 1
        proc = c.start("fulldisk", disk)
        run = c.run_dir("fulldisk", disk)
        c.wait_for(proc, lambda: bool(checkpoint_paths(run)))
        with open(disk / "filler", "wb", buffering=0) as fh:  # fill it to the last byte
            for chunk in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        fh.write(b"\0" * chunk)
                except OSError:
                    pass
        code = proc.wait()
        errors = [ln for ln in proc.text().replace("\r", "\n").splitlines() if ln.startswith("error:")]
        clean = (code == 1 and len(errors) == 1 and "Traceback" not in proc.text()
                 and not list((run / "checkpoints").glob(".tmp*")))
        (disk / "filler").unlink()  # the operator frees space and runs the same command again
        again = c.start("fulldisk", disk)
        if clean and again.wait() == 0:
            row.survived = 1
        else:
            row.note = f"exit {code} with {errors[:1]}, then {again.code} (see {proc.log})"
        finish(c, row, run, note=f"stopped with: {errors[0][:100]}..." if errors else "")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return row


def print_table(rows: list[Row], wall_s: float, args) -> None:
    print(f"\nchaos: tiny preset, max_steps {args.max_steps}, checkpoint every {args.every} steps, "
          f"runs by {args.spawn}, seed {args.seed}, {args.kills} kills, {wall_s:.0f} s")
    print(f"| {'fault':<44} | trials | survived | steps lost | steps redone | final model == uninterrupted |")
    print(f"| {'-' * 44} | ------ | -------- | ---------- | ------------ | ---------------------------- |")
    for r in rows:
        equal = "skipped" if r.skipped else ("yes (bitwise)" if r.equal else "NO")
        print(f"| {r.fault:<44} | {r.trials:>6} | {r.survived:>8} | {r.lost:>10} | {r.redone:>12} | {equal:<28} |")
    for r in rows:
        if r.note:
            print(f"note ({r.fault}): {r.note}")
    print("bitwise: weights, EMA and optimizer state compared with torch.equal, every logged loss, LR and grad "
          "norm and the evaluation JSON compared for equality (no tolerance: resume is exact on CPU)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 kills, 8-step runs (the test)")
    p.add_argument("--kills", type=int, help="kill -9s (default 20; 3 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments and the garbled bytes' place")
    p.add_argument("--spawn", choices=("exec", "fork"), help="default: exec (fork with --quick)")
    p.add_argument("--out", help="work folder (default: a temp folder, removed at the end)")
    args = p.parse_args(argv)
    args.kills = args.kills or (3 if args.quick else 20)
    args.spawn = args.spawn or ("fork" if args.quick else "exec")
    args.max_steps, args.every = (8, 2) if args.quick else (40, 4)
    torch.set_num_threads(1)  # no OpenMP pool in this process: forks stay safe
    out = Path(args.out or tempfile.mkdtemp(prefix="chaos_"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    c = Chaos(out, args.spawn, args.max_steps, args.every, 2 if args.quick else 8, random.Random(args.seed))
    try:
        c.record_reference()
        rows = [kills(c, args.kills), *corruption(c), sigterm_in_evaluation(c), concurrent(c), full_disk(c)]
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print_table(rows, time.monotonic() - start, args)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
