"""Peak RSS of every pass-2 task of ``curate select``, one JSON line per task (a benchmark hook).

Put this folder first on PYTHONPATH and name a log file; the task processes that select starts import
it too (Python imports ``sitecustomize`` at start-up), reset their peak (``/proc/self/clear_refs``) before
each task and append ``{"task", "lo", "hi", "before", "hwm", "s"}`` (MiB, seconds) after it. Linux only.

    TASK_RSS_LOG=/tmp/tasks.jsonl PYTHONPATH=benchmarks/task_rss:. curate select --run RUN \\
        --method clipcov --partition kmeans:100 --fraction 0.1 --workers 2 --memory 1G
"""

import functools
import json
import os
import time

if os.environ.get("TASK_RSS_LOG"):
    import curate.select.pipeline as _pipeline

    _task = _pipeline._pass2_task

    def _status(key: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) // 1024 for line in fh if line.startswith(key))

    @functools.wraps(_task)
    def _pass2_task(task, spec):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # the peak (VmHWM) starts again from the current RSS
        before, t0 = _status("VmRSS"), time.time()
        out = _task(task, spec)
        rec = {"pid": os.getpid(), "task": task[0], "lo": task[1], "hi": task[2], "before": before,
               "hwm": _status("VmHWM"), "s": round(time.time() - t0, 1)}
        with open(os.environ["TASK_RSS_LOG"], "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        return out

    _pipeline._pass2_task = _pass2_task
