"""The ``ray`` engine: Ray tasks, Ray actors, and Ray Data over a list of work items.

``run_items`` turns the item list (shards) into a Ray Data dataset with one block per item and maps
it with an actor pool: each actor builds the :class:`ItemWorker` once (loads the model, on its own GPU
when the cluster has GPUs) and processes ``items_per_task`` items per call. Items are written by the
worker itself (per-item atomic outputs), so a retried or repeated item is harmless and a rerun after
a failure resumes where the outputs stop. ``map`` runs one Ray task per item with the ``shared``
inputs put in the object store once (tasks reuse warm worker processes; actors would each start one).

Ray is imported lazily: the rest of curate works without it (``pip install 'curate[ray]'``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from curate.engines.base import Engine, ItemWorker, R, null_progress, register_engine
from curate.errors import CurateError, InputError, StrictModeError, UsageError
from curate.progress import NullProgress, Progress, set_total

_log = logging.getLogger(__name__)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'curate[ray]' (or 'ray[data]')") from None
    return ray


def curate_error(exc: BaseException) -> CurateError | None:
    """The :class:`CurateError` a Ray error wraps (a fresh one with the one-line message), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)
        if isinstance(cause, CurateError):
            return type(cause)(str(cause))
        if isinstance(cur, CurateError) and type(cur).__module__.startswith("curate"):
            return cur
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
    return None


def _reraise(exc: BaseException) -> None:
    err = curate_error(exc)
    if err is not None:
        raise err from None
    raise exc


def _call(fn: Callable[..., Any], item: Any, **shared: Any) -> Any:
    return fn(item, **shared)


class _ItemActor:
    """Ray Data actor: opens the worker once, then processes batches of item indices."""

    def __init__(self, worker: ItemWorker, items: list[Any], device: str) -> None:
        self.worker, self.items = worker, items
        worker.open(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = [int(i) for i in batch["index"]]
        try:
            results = [json.dumps(r, sort_keys=True) for r in
                       self.worker.process([self.items[i] for i in idx], NullProgress())]
            errors = [""] * len(idx)
        except CurateError as exc:  # Ray Data drops the original exception: carry it as data
            results = ["null"] * len(idx)
            errors = [json.dumps([type(exc).__name__, str(exc)])] * len(idx)
        return {"index": np.asarray(idx, np.int64), "result": np.asarray(results, dtype=object),
                "error": np.asarray(errors, dtype=object)}


_ERRORS: dict[str, type[CurateError]] = {c.__name__: c for c in (CurateError, UsageError, InputError,
                                                                  StrictModeError)}


@register_engine
class RayEngine(Engine):
    """Ray: a local Ray instance, or a cluster (``address``); GPUs per actor when the cluster has them."""

    name = "ray"
    summary = "Ray (Ray Data over shards, actors holding the model; a cluster with --ray-address)"
    accepts = frozenset({"device", "address", "num_cpus", "workers", "gpus_per_worker", "items_per_task"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        if o.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {o.device} with --engine ray: use auto, cpu or cuda (Ray assigns the GPUs)")
        if o.workers is not None and o.workers < 1:
            raise UsageError(f"ray workers must be >= 1 (got {o.workers})")
        if o.items_per_task < 1:
            raise UsageError(f"items per task must be >= 1 (got {o.items_per_task})")
        if o.num_cpus is not None and o.address not in (None, "local"):
            raise UsageError("--ray-num-cpus only applies to a local Ray instance (no --ray-address)")
        if o.gpus_per_worker is not None and o.gpus_per_worker < 0:
            raise UsageError(f"GPUs per worker must be >= 0 (got {o.gpus_per_worker})")
        self._ray: Any = None
        self._owned = False

    @property
    def distributed(self) -> bool:
        return True

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._ray is not None:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            address = self.options.address
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": False}
            if address in (None, "local"):
                kwargs["num_cpus"] = self.options.num_cpus
                # the instance is this call's own: Ray's notice that it uses token authentication (it does,
                # the secure default) is noise here; for a cluster the user runs, it stays
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            try:
                ray.init(address=None if address == "local" else address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UsageError(f"could not connect to Ray at {address}: {first}") from None
            self._owned = True
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        self._ray = ray

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray, self._owned = None, False

    def _require(self) -> Any:
        if self._ray is None:
            self.start()
        return self._ray

    # -- resources -------------------------------------------------------------------------------
    def gpus_per_worker(self) -> float:
        """GPUs each task or actor asks for: the option, else 1 when the cluster has GPUs (0 for --device cpu)."""
        if self.options.gpus_per_worker is not None:
            return float(self.options.gpus_per_worker)
        if self.options.device == "cpu":
            return 0.0
        gpus = float(self._require().cluster_resources().get("GPU", 0))
        if self.options.device == "cuda" and gpus == 0:
            raise UsageError("--device cuda with --engine ray: the Ray cluster has no GPUs")
        return 1.0 if gpus > 0 else 0.0

    def worker_device(self) -> str:
        """The torch device inside a worker (Ray sets CUDA_VISIBLE_DEVICES to the worker's GPUs)."""
        return "cuda" if self.gpus_per_worker() > 0 else "cpu"

    def parallelism(self) -> int:
        """Workers that can run at once: the option, else the cluster's GPUs (or CPUs) per worker."""
        if self.options.workers is not None:
            return self.options.workers
        res = self._require().cluster_resources()
        g = self.gpus_per_worker()
        if g > 0:
            return max(1, int(res.get("GPU", 0) // g))
        return max(1, int(res.get("CPU", 1)))

    # -- work --------------------------------------------------------------------------------------
    def map(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        shared: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[R]:
        ray = self._require()
        if not items:
            return []
        refs = {k: ray.put(v) for k, v in (shared or {}).items()}
        task = ray.remote(_call).options(num_cpus=1, num_gpus=self.gpus_per_worker())
        futures = [task.remote(fn, item, **refs) for item in items]
        progress = null_progress(progress)
        try:
            pending = list(futures)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)  # raise early on a failed task
                progress.advance(len(done))
            return list(ray.get(futures))
        except Exception as exc:
            # The other tasks are left to finish (their results are dropped; a Ray instance curate started is
            # shut down by ``close``). Not ``ray.cancel``: cancelling races with tasks that are completing,
            # and Ray then aborts the driver ("Tried to complete task that was not pending"; seen in this
            # project's test suite, Ray 2.60; ray-project/ray#54846).
            _reraise(exc)
            raise

    def run_items(self, worker: ItemWorker, items: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        ray = self._require()
        progress = null_progress(progress)
        n = len(items)
        if n == 0:
            return []
        per_task = self.options.items_per_task
        actors = max(1, min(self.parallelism(), -(-n // per_task)))
        ds = ray.data.from_items([{"index": i} for i in range(n)], override_num_blocks=n)
        ds = ds.map_batches(
            _ItemActor,
            fn_constructor_kwargs={"worker": worker, "items": list(items), "device": self.worker_device()},
            batch_size=per_task,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            num_gpus=self.gpus_per_worker(),
        )
        out: list[Any] = [None] * n
        got = np.zeros(n, bool)
        progress.start(worker.label, total=None, unit=worker.unit)
        finished, finished_units = 0, 0.0
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.CRITICAL)  # failures are raised here, as one line, not logged as well
        try:
            for row in ds.iter_rows():
                if row["error"]:
                    kind, message = json.loads(row["error"])
                    raise _ERRORS.get(kind, CurateError)(message)
                i = int(row["index"])
                out[i] = json.loads(row["result"])
                got[i] = True
                units = worker.progress_units(out[i])
                progress.advance(units)
                finished += 1
                finished_units += units
                set_total(progress, finished_units / finished * n)  # estimated from the items done so far
        except CurateError:
            raise
        except Exception as exc:
            _reraise(exc)
            raise
        finally:
            data_log.setLevel(level)
            progress.finish()
        if not got.all():
            raise CurateError(f"ray returned no result for {int((~got).sum())} of {n} items; rerun to resume")
        return out
