"""The batch on a Ray cluster: one slide per actor task, the bundle loaded once per actor.

Ray (``pip install 'dnrt[cluster]'``) is imported here only, when ``--ray`` is given. Each worker
is a Ray actor holding a :class:`~dnrt.batch.worker.SlideWorker` (one Translator, loaded once);
it reserves ``--cpus-per-worker`` CPUs and, where the cluster has GPUs, ``--gpus-per-worker``
GPUs. Slides are handed out one task per actor at a time (:data:`QUEUED_PER_WORKER`). Inputs
and the output folder must be at the same path on every node (a shared filesystem); the worker
writes the output there itself, to a temporary name renamed when complete.

A worker process that dies mid-slide (killed, out of memory, a crash in a native library) is
restarted by Ray and its tasks are retried (``max_restarts``/``max_task_retries``); the killed
process's temporary file is removed by the retry, whose writer clears the stale temporaries of
dead processes for that destination before writing (``dnrt/atomic.py``). A slide whose
worker dies on every retry is recorded as failed and the worker replaced.

The driver never waits forever on a cluster: an address that does not answer is an error within
:data:`CONNECT_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dnrt.batch.runner import Task
from dnrt.errors import DnrtError
from dnrt.runtime.options import TranslateOptions

CONNECT_TIMEOUT_S = 30.0
TIMEOUT_ENV = "DNRT_RAY_CONNECT_TIMEOUT_S"
#: Tasks waiting at each actor besides the running one. None: when an actor dies past its
#: restarts, Ray fails its queued tasks too, in no reliable order, so the slide that killed it
#: could not be told from innocent ones; the cost is one driver round trip per slide.
QUEUED_PER_WORKER = 0
#: How many times a worker is restarted, and its slide retried, after its process died.
DEFAULT_RETRIES = 2
LOCAL = "local"
WAIT_SLICE_S = 0.25
#: How long an interrupted driver waits for its killed workers to exit before cleaning up.
KILL_WAIT_S = 10.0


class ClusterUnreachable(DnrtError):
    """The Ray address did not answer in time; Ray's own exit would wait on it much longer."""


#: Ray reads this when imported: "0" makes a cluster it starts use the loopback address, as on
#: macOS/Windows, instead of the machine's network address.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Ray's switch for token authentication; a driver joining by address must set it to "token".
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _import_ray(local: bool = False) -> Any:
    # A local cluster serves this machine alone: nothing of it need listen on the network.
    if local:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise DnrtError("--ray needs Ray: pip install 'dnrt[cluster]'") from None
    return ray


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to ``host:port`` within ``timeout`` s, or a one-line DnrtError."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise DnrtError(
            f"Ray address {address!r} is not HOST:PORT (the head's GCS address, e.g. 10.0.0.1:6379), 'auto' or 'local'"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise DnrtError(f"Ray cluster at {address} does not answer ({reason})") from None


def connect(address: str | None, *, timeout: float | None = None) -> bool:
    """Join (or start, for ``local``) a Ray cluster; True when this call initialised Ray.

    A process already connected (``ray.init`` called by the host program) is reused as it is.
    ``timeout`` defaults to ``$DNRT_RAY_CONNECT_TIMEOUT_S`` or :data:`CONNECT_TIMEOUT_S`.
    """
    if timeout is None:
        try:
            timeout = float(os.environ.get(TIMEOUT_ENV, CONNECT_TIMEOUT_S))
        except ValueError:
            raise DnrtError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    if address is not None and address.startswith("ray://"):
        raise DnrtError(
            "Ray Client addresses (ray://) are not supported; give the head's GCS address HOST:PORT"
        )
    local = address in (None, "", LOCAL)
    ray = _import_ray(local=local)
    _diagnostics_to_stderr(ray)
    if ray.is_initialized():
        return False
    # Ray's C++ core logs its connection retries on stderr as warnings; errors still show.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    if local:
        # A fresh local cluster sized to this machine: "local" says so to Ray, which otherwise
        # joins whatever RAY_ADDRESS or the last `ray start` on this machine names.
        kwargs["address"] = LOCAL
    elif address == "auto":
        kwargs["address"] = "auto"
    else:
        deadline = time.monotonic() + timeout
        _check_reachable(address, min(10.0, timeout))
        kwargs["address"] = address
        timeout = max(1.0, deadline - time.monotonic())
    # ray.init may wait minutes on a port that accepts but does not speak Ray: it runs in a thread
    # so that the wait is bounded. The thread then stays alive for the process's lifetime: Ray
    # ties the processes of a cluster it starts to the thread that started them (Linux's
    # parent-death signal), which would kill that cluster when the thread ended.
    failure: list[BaseException] = []
    done = threading.Event()

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # reported on the caller's thread
            failure.append(exc)
        finally:
            done.set()
        threading.Event().wait()

    threading.Thread(target=init, name="dnrt-ray-init", daemon=True).start()
    if not done.wait(timeout):
        raise ClusterUnreachable(f"Ray cluster at {address} did not answer within {timeout:.0f} s")
    if failure:
        first = str(failure[0]).strip().splitlines()
        reason = first[0] if first else type(failure[0]).__name__
        if not local and not os.environ.get(AUTH_MODE_ENV):
            # Ray joins an address without its token unless told to, and then only says it failed.
            reason += (
                f" (a cluster started with token authentication, Ray's default, needs {AUTH_MODE_ENV}=token "
                "and its token: ~/.ray/auth_token or RAY_AUTH_TOKEN)"
            )
        raise DnrtError(f"cannot join the Ray cluster at {address or 'local'}: {reason}")
    return True


def _diagnostics_to_stderr(ray: Any) -> None:
    """Ray prints the cluster's messages to the driver ("worker died", "task will be retried")
    on stdout, which would corrupt ``--json``: send them to stderr. Ray's private hook; where a
    Ray version lacks it, nothing changes."""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(module, "print_to_stdstream", None)
    if original is None or getattr(original, "_dnrt_stderr", False):
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return original({**data, "is_err": True}, *args, **kwargs)

    to_stderr._dnrt_stderr = True  # type: ignore[attr-defined]
    module.print_to_stdstream = to_stderr


class RayExecutor:
    """Actors holding one Translator each; yields results as slides finish."""

    def __init__(
        self,
        bundle: str,
        options: TranslateOptions,
        *,
        jobs: int,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        ray = _import_ray()
        self.ray = ray
        self.busy_seconds = 0.0
        self._in_flight: dict[Any, tuple[Task, int, int]] = {}
        self._pids: list[int] = []
        resources = ray.cluster_resources()
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if workers is None:
            if gpus_per_worker > 0:
                workers = int(resources.get("GPU", 0) // gpus_per_worker)
            else:
                workers = int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9))
            workers = max(1, min(workers, jobs))
        # Actors the cluster cannot place would wait forever: refuse up front.
        if gpus_per_worker * workers > resources.get("GPU", 0) or cpus_per_worker * workers > resources.get(
            "CPU", 0
        ):
            raise DnrtError(
                f"{workers} workers of {cpus_per_worker:g} CPUs and {gpus_per_worker:g} GPUs do not fit the Ray "
                f"cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); lower --workers"
            )
        if gpus_per_worker > resources.get("GPU", 0):
            raise DnrtError(
                f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs"
            )
        if cpus_per_worker > resources.get("CPU", 0):
            raise DnrtError(
                f"--cpus-per-worker {cpus_per_worker:g}: the Ray cluster has {resources.get('CPU', 0):g} CPUs"
            )
        if options.threads is None:
            # One model thread per reserved CPU: workers sharing a node do not oversubscribe it.
            options = options.replace(threads=max(1, int(cpus_per_worker)))
        from dnrt.batch.worker import SlideWorker

        self._actor_class = ray.remote(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=retries, max_task_retries=retries
        )(SlideWorker)
        self._args = (str(Path(bundle).resolve()), options)
        self.workers = workers
        self.actors = [self._new_actor() for _ in range(workers)]
        self._wait_ready()

    def _new_actor(self) -> Any:
        return self._actor_class.remote(*self._args)

    def _wait_ready(self) -> None:
        """Every actor loaded the bundle (or the batch stops with the first one's error)."""
        ray = self.ray
        try:
            self._pids = ray.get([actor.pid.remote() for actor in self.actors])
        except ray.exceptions.RayActorError as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, DnrtError):
                raise DnrtError(str(cause)) from None
            text = str(cause).strip().splitlines()
            message = next((line for line in reversed(text) if "DnrtError" in line), text[-1] if text else "")
            raise DnrtError(
                f"a Ray worker could not load the model: {message.replace('dnrt.errors.DnrtError: ', '')}"
            ) from None

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict[str, Any]]]:
        ray = self.ray
        pending = list(reversed(tasks))
        # ref -> (task, worker slot, the slot's actor generation when submitted)
        in_flight: dict[Any, tuple[Task, int, int]] = {}
        self._in_flight = in_flight
        load = [0] * len(self.actors)
        generation = [0] * len(self.actors)

        def submit(slot: int) -> None:
            task = pending.pop()
            ref = self.actors[slot].run.remote(
                str(task.job.input.resolve()), str(task.job.output.resolve()), task.overwrite
            )
            in_flight[ref] = (task, slot, generation[slot])
            load[slot] += 1

        t0 = time.perf_counter()
        for slot in range(len(self.actors)):
            for _ in range(1 + QUEUED_PER_WORKER):
                if pending:
                    submit(slot)
        self.busy_seconds += time.perf_counter() - t0
        while in_flight:
            # A bounded wait: signals (Ctrl-C, SIGTERM) are handled between waits, not after
            # the next slide ends. Results come in submission order when several are ready.
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_SLICE_S)
            if not ready:
                continue
            t0 = time.perf_counter()
            ref = ready[0]
            task, slot, submitted_to = in_flight.pop(ref)
            load[slot] -= 1
            record: dict[str, Any] | None
            try:
                record = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if submitted_to == generation[slot]:
                    # Restarts exhausted: the first error of this actor is the slide it was
                    # running, which kills its worker. Record it, replace the worker.
                    record = {
                        "status": "failed",
                        "error": f"the worker died on this slide ({type(exc).__name__})",
                    }
                    self.actors[slot] = self._new_actor()
                    generation[slot] += 1
                else:
                    # Queued behind that slide on the dead actor, never started: hand it out again.
                    record = None
                    pending.append(task)
            except ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()
                record = {"status": "failed", "error": f"Ray: {first[0] if first else type(exc).__name__}"}
            if record is not None and isinstance(record.get("pid"), int) and slot < len(self._pids):
                self._pids[slot] = record["pid"]  # a restarted worker has a new process
            while pending and load[slot] < 1 + QUEUED_PER_WORKER:
                submit(slot)
            self.busy_seconds += time.perf_counter() - t0
            if record is not None:
                yield task, record

    def pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def close(self) -> None:
        ray = self.ray
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []
        unfinished = [entry[0].job.output for entry in self._in_flight.values()]
        if unfinished:
            # Interrupted: once the killed workers are gone (those on this node), their
            # temporaries are stale and go too.
            deadline = time.monotonic() + KILL_WAIT_S
            while any(_alive(pid) for pid in self._pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            remove_stale_outputs(unfinished)


def remove_stale_outputs(outputs: list[Path], wait_s: float = 2.0) -> None:
    """After the workers were killed (an interrupted driver), remove their temporaries.

    Only temporaries whose writing process no longer exists are removed, so this waits (up to
    ``wait_s``) for the killed processes to go.
    """
    from dnrt.atomic import TEMP_MARKER, remove_stale_temps

    deadline = time.monotonic() + wait_s
    left = list(outputs)
    while left:
        for path in left:
            remove_stale_temps(path)
        left = [p for p in left if _has_temp(p, TEMP_MARKER)]
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _has_temp(dest: Path, marker: str) -> bool:
    try:
        return any(n.startswith(f".{dest.name}.dnrt-") for n in os.listdir(dest.parent))
    except OSError:
        return False
