"""Run ``examples/reference_trainer.py ARGS`` and send the process a signal after sample N of round R.

``python tests/trainer_killed_at.py SIGNAL ROUND SAMPLES ARGS...`` (SIGNAL: KILL or INT): a crash or a
Ctrl-C at a chosen point in the middle of a round (deterministic, unlike a kill from outside at a time),
for the resume test.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from curate.trainer import reference

SIGNAL, ROUND, SAMPLES = getattr(signal, f"SIG{sys.argv[1]}"), int(sys.argv[2]), int(sys.argv[3])
# Ctrl-C as in a terminal even when the tests run in the background of a shell, which starts them with SIGINT
# ignored (then Python installs no KeyboardInterrupt handler and the signal would be lost)
signal.signal(signal.SIGINT, signal.default_int_handler)
_sent = False
_advance = reference.RoundProgress.advance


def _advance_then_signal(self: reference.RoundProgress, n: float = 1) -> None:
    global _sent
    _advance(self, n)
    if not _sent and self.task.startswith(f"round {ROUND} ") and self.done >= SAMPLES:
        _sent = True
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), SIGNAL)


reference.RoundProgress.advance = _advance_then_signal  # type: ignore[method-assign]
example = Path(__file__).resolve().parents[1] / "examples" / "reference_trainer.py"
sys.argv = [str(example), *sys.argv[4:]]
runpy.run_path(str(example), run_name="__main__")
