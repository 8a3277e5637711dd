"""Chaos run: the tiny preset through the faults of a hostile week (issue 21), against an
uninterrupted run of the same command.

    python scripts/chaos.py                 # >= 20 kill -9s, every fault, `python main.py` per run
    python scripts/chaos.py --quick         # 3 kills, 8-step runs, forked from this process

Faults: `kill -9` at random moments (each run is restarted with the same command until it
finishes), three kinds of checkpoint corruption of the latest checkpoint after a SIGTERM
(truncation, 1000 random bytes at 25% of the file, a foreign pickle that would run code if
unpickled), a SIGTERM during the final evaluation, a second run started on the same folder, and a
disk that fills up during the run (a small tmpfs; skipped with a note where mounting is refused).
Every run ends with the final samples and the sign-fidelity evaluation (eval_at_end); with --quick
only the uninterrupted run and the evaluation fault's do (the evaluation, fvd's reference pool
included, is most of a tiny run's time).

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
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from chaos_harness import Chaos, Proc, Row, resumed_at  # scripts/ (beside this file); it puts the repo on sys.path
from checkpoint import checkpoint_paths, load_checkpoint

MARKER = "FOREIGN_PICKLE_RAN"  # the file the foreign pickle would create if it were unpickled


class Evil:
    """What a foreign pickle may hold: unpickling it would run a command (it must never be)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


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
    in its final samples and evaluation (1 : 3 : 1). Returns the phase ("" when the phase drawn is
    behind the run: no kill)."""
    first_s, last_s, total_s = c.reference["phases_s"]
    phase = c.rng.choice(PHASES)
    done = c.last_logged(run)
    if phase == "training" and done >= c.max_steps - 1:
        return ""  # no training step left in this run: let it finish, the next run takes the kill
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
            if not phase or proc.poll() is not None:
                break  # it finished first, or is past the moment drawn
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
          "norm and the evaluation JSON (" + ("every run's" if not args.quick else "the evaluation fault's") +
          ") compared for equality (no tolerance: resume is exact on CPU)")


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
    c = Chaos(out, args.spawn, args.max_steps, args.every, 2 if args.quick else 8, not args.quick,
              random.Random(args.seed))
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
