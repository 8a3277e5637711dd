"""What every entry point does with errors and signals (main.py, evaluate.py, quick_test_fixes.py,
debug_vivit_sampling.py, bench.py, `python -m data.prepare`).

A user-facing error is one `error: ...` line on stderr naming the key, file or path, and an exit code:
2 for bad input (config, arguments, data, a checkpoint that does not fit), 1 for the environment (a
full or read-only disk, permissions, memory). SIGINT / SIGTERM stop the process with 130 / 143 at any
point; the training loop defers them to the next step boundary (`StopSignals.deferred`), and a
repeated signal while stopping is ignored, so the clean-up it interrupts cannot become a traceback.
A bug (any other exception) keeps its traceback: that is for the developer, not a user error.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
from typing import Callable, Iterator

EXIT_ENVIRONMENT = 1
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

# errno values that mean "the machine", not "the input": exit 1.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                       errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EBUSY, errno.ETXTBSY}
_HINTS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived where the process stops at once (outside the training loop)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL[self.signum]


class StopSignals:
    """SIGINT/SIGTERM handlers: raise `Stopped` at once, or, inside `deferred()`, only record the
    signal for the loop to act on at its next step boundary. Leaving `deferred()` with a recorded
    signal the loop did not acknowledge raises `Stopped`, so a signal that arrives after the last
    step boundary still stops the run. Any signal after the first is ignored."""

    def __init__(self):
        self.received: list[int] = []
        self.acknowledged = False
        self._deferring = False
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        for sig in EXIT_SIGNAL:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def finish(self, restore: bool = True) -> None:
        """Put the previous handlers back (a caller of main() in-process), or, when the process is
        about to exit (an entry point), ignore any further signal at the OS level: the exit code is
        decided, and the interpreter's shutdown would otherwise die of a late Ctrl-C."""
        if restore:
            self.restore()
        else:
            for sig in EXIT_SIGNAL:
                signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        if self._deferring or len(self.received) > 1:
            return
        raise Stopped(signum)

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    @contextlib.contextmanager
    def deferred(self) -> Iterator["StopSignals"]:
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False
        if self.received and not self.acknowledged:
            raise Stopped(self.received[0])


def quiet_interrupts(module_name: str) -> None:
    """Called by an entry point before its heavy imports: until main() installs the stop handlers,
    Ctrl-C ends the process by the signal (exit 130 in a shell), as SIGTERM does, instead of a
    KeyboardInterrupt traceback from inside torch's import. Only when run as a script."""
    if module_name == "__main__":
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_line(text: str) -> str:
    """A message on one line: its lines joined by '; '."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_os_error(exc: OSError, doing: str = "", path: object = None) -> str:
    """'cannot write PATH: No space left on device (disk full)'-style text. `path` names the file
    when the error does not (a failed write() on an open file has no filename)."""
    where = path if path is not None else exc.filename
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno)
    head = " ".join(str(x) for x in (doing, where) if x not in (None, ""))
    return (f"{head}: " if head else "") + what + (f" ({hint})" if hint and hint.lower() not in what.lower() else "")


def os_error_code(exc: OSError) -> int:
    return EXIT_ENVIRONMENT if exc.errno in _ENVIRONMENT_ERRNOS or exc.errno is None else EXIT_BAD_INPUT


def classify(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for a user-facing error, None for anything else (a bug)."""
    from checkpoint import CheckpointError, DivergedError
    from config import ConfigError
    from data.real.common import DatasetError
    from run_folder import RunInUseError

    if isinstance(exc, Stopped):
        return exc.exit_code, f"stopped by signal {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGNAL[signal.SIGINT], "stopped by signal SIGINT"
    if isinstance(exc, DivergedError):
        return EXIT_NONFINITE, one_line(exc)
    if isinstance(exc, CheckpointError):
        cause = exc.__cause__
        code = os_error_code(cause) if isinstance(cause, OSError) else EXIT_BAD_INPUT
        return code, one_line(exc)
    if isinstance(exc, (ConfigError, DatasetError, RunInUseError)):
        return EXIT_BAD_INPUT, one_line(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return EXIT_ENVIRONMENT, f"out of memory ({one_line(exc) or type(exc).__name__}); lower batch_size, " \
                                 "num_frames or frame_size_px"
    if isinstance(exc, OSError):
        return os_error_code(exc), describe_os_error(exc)
    return None


def report(exc: BaseException) -> int:
    """Print the one-line message of a user-facing error; re-raise anything else."""
    found = classify(exc)
    if found is None:
        raise exc
    code, message = found
    prefix = "" if isinstance(exc, (Stopped, KeyboardInterrupt)) else "error: "
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    return code


def run(main: Callable[[list[str]], int], argv: list[str], restore_signals: bool = True) -> int:
    """Call an entry point's main(argv) with stop signals installed; user errors become one line.
    `restore_signals=False` (the `__main__` block): signals after main() returned are ignored, so
    the exit code stays the one decided."""
    stop = StopSignals().install()
    try:
        return main(argv)
    except (Exception, Stopped, KeyboardInterrupt) as exc:  # noqa: B902: report() re-raises bugs
        return report(exc)
    finally:
        stop.finish(restore_signals)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error format: one `error: ...` line, exit code 2. Flags are
    spelled with underscores, as config keys are (`--output_dir`); the hyphen spelling of a long
    flag (`--output-dir`) is read as the same flag."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([_underscored(a) for a in args], namespace)

    def error(self, message: str):
        print(f"error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _underscored(arg: str) -> str:
    if not arg.startswith("--") or arg == "--":
        return arg
    flag, eq, value = arg.partition("=")
    return "--" + flag[2:].replace("-", "_") + eq + value


def positive(kind: type = int) -> Callable[[str], object]:
    """argparse type: a number > 0 of `kind`, with a message naming what was expected."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"expected a finite {kind.__name__} > 0, got {text!r}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def seed(text: str) -> int:
    """argparse type: a seed in 0 .. 2^32 - 1 (what config.MAX_SEED allows a run)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{2**32 - 1}, got {text}")
    return value


def finite(text: str) -> float:
    """argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit("cli.py is a helper module; run main.py, evaluate.py, ...")
