"""The interface every backend offers the scheduler (architecture.md, "Backends").

A backend is a runner in Polygraphy's sense: constructed cheaply, activated (sessions, engines,
streams are created in ``activate``), then driven by the scheduler through two calls that mirror
the two graphs of a bundle, and deactivated. The lifecycle lives here, once, for every backend:

- ``activate()`` / ``deactivate()`` are idempotent (a second call does nothing) and guarded by a
  lock; subclasses fill in ``activate_impl`` / ``deactivate_impl`` and the two passes
  ``collect_impl`` / ``infer_impl``.
- An activation that fails half-way is undone: ``deactivate_impl`` runs on whatever was built
  (so it must cope with a partial state), then the error propagates. Nothing leaks and the
  backend stays inactive, ready for another try.
- ``collect`` / ``infer`` on an inactive backend (never activated, or deactivated) is a
  :class:`DnrtError` naming the backend, not an ``AttributeError`` on a missing session.
- ``with backend:`` activates and deactivates.

The facts of the job a backend sizes itself by (threads, precision, GPU, batch, tile) arrive as
one typed :class:`BackendContext`. The scheduler never knows which backend it drives.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from dnrt.bundle import Bundle
from dnrt.errors import DnrtError
from dnrt.semantics import CollectFlavour


@dataclass(frozen=True)
class BackendContext:
    """What the job tells every backend; ``None``: the backend's (or the bundle's) default.

    A backend takes what concerns it and ignores the rest (ONNX Runtime has no use for ``tile``;
    TensorRT builds its shape profile from ``tile``, ``margin`` and ``batch``)."""

    #: CPU threads for the model's own kernels.
    threads: int | None = None
    #: Activation precision (``fp32``, ``fp16``, ``bf16``); each backend accepts its own subset.
    precision: str = "fp32"
    #: Which CUDA device (GPU backends).
    device_index: int = 0
    #: Largest number of tiles per call.
    batch: int | None = None
    #: Tile size and margin of the job (the bundle's when ``None``).
    tile: int | None = None
    margin: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise DnrtError(f"threads must be at least 1, got {self.threads}")
        if self.batch is not None and self.batch < 1:
            raise DnrtError(f"batch must be at least 1, got {self.batch}")
        if self.device_index < 0:
            raise DnrtError(f"device index must be at least 0, got {self.device_index}")

    @classmethod
    def fields(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> BackendContext:
        """A copy with ``changes`` (``None`` values are skipped: they mean "not said")."""
        unknown = set(changes) - self.fields()
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


class Backend(abc.ABC):
    #: Short name used on the command line (``--backend``).
    name: str = ""
    #: Whether ``collect`` and ``infer`` may run at the same time from two threads
    #: (GPU backends: one CUDA stream per pass), letting streaming overlap them.
    concurrent_passes: bool = False
    #: Tiles per call when the user does not say.
    preferred_batch: int = 4

    def __init__(self, bundle: Bundle, context: BackendContext | None = None, **context_fields: Any) -> None:
        """``context_fields`` (``threads=2``, ``batch=4``, ...) override fields of ``context``;
        anything else is a ``TypeError``, as an unknown keyword would be."""
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.context = (context or BackendContext()).replace(**context_fields)
        self._active = False
        self._lifecycle_lock = threading.RLock()
        #: The graphs coming runs will use (``expect_graphs``); ``None``: not said.
        self.expected_graphs: frozenset[str] | None = None

    # -- optional features: defaults that mean "this backend has nothing to add" ------------
    def expect_graphs(self, graphs: frozenset[str]) -> None:
        """Say which graphs the coming runs use, before ``activate``: ``"stats"`` (collect with
        the image: IN), ``"collect"`` (statistics only: KIN, DN, TIN's thumbnail) and
        ``"dense"`` (the second pass). A backend that loads a session or engine per graph
        loads exactly these when activated: nothing is built for a graph the mode never runs,
        and a broken graph it does run is reported before any output exists."""
        self.expected_graphs = frozenset(graphs)

    def set_concurrency(self, concurrent: bool) -> None:  # noqa: B027 - optional, a no-op by default
        """Say whether collect and infer will run side by side (streaming with overlap), before
        ``activate``. Most backends need not know; ONNX Runtime on the CPU splits its threads."""

    def describe(self) -> str:
        """One line for logs and benchmark output: which library, which device."""
        return self.name

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Build what the passes need. Idempotent; a failure half-way releases what was built."""
        with self._lifecycle_lock:
            if self._active:
                return
            try:
                self.activate_impl()
            except BaseException:
                self._release_after_failure()
                raise
            self._active = True

    def _release_after_failure(self) -> None:
        # The activation error is the one to report; a second one while cleaning up would hide it.
        with contextlib.suppress(Exception):
            self.deactivate_impl()

    def deactivate(self) -> None:
        """Release everything ``activate`` built. Idempotent; a never-activated backend is a no-op."""
        with self._lifecycle_lock:
            if not self._active:
                return
            self._active = False
            self.deactivate_impl()

    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Create sessions, engines, streams. May raise half-way: ``deactivate_impl`` then runs."""

    @abc.abstractmethod
    def deactivate_impl(self) -> None:
        """Release what ``activate_impl`` created, including after a partial activation."""

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()

    def _require_active(self, call: str) -> None:
        if not self._active:
            raise DnrtError(
                f"the {self.name or type(self).__name__} backend is not active: {call}() needs "
                "activate() first (or `with backend:`)"
            )

    # -- the two passes ----------------------------------------------------------------
    def collect(
        self, tiles: np.ndarray, flavour: CollectFlavour, *, image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Run the stats graph on ``tiles [N, Cin, S, S]`` float32.

        Returns ``(image [N, Cout, S, S], mean [N, L], std [N, L])``, all float32;
        every norm layer normalized with the tile's own statistics in ``flavour``.
        With ``image=False`` (KIN/DN's first pass keeps only the statistics) the
        backend may skip computing or copying the image and return ``None`` for it.

        ``tiles`` is only valid during the call: the scheduler reuses the buffer.
        """
        self._require_active("collect")
        return self.collect_impl(tiles, flavour, image=image)

    def infer(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        """Run the DenseNorm graph: ``nbr_mean``/``nbr_std`` are ``[N, L, 3, 3]`` float32
        (already sanitized and floored). Returns ``image [N, Cout, S, S]`` float32."""
        self._require_active("infer")
        return self.infer_impl(tiles, nbr_mean, nbr_std)

    @abc.abstractmethod
    def collect_impl(
        self, tiles: np.ndarray, flavour: CollectFlavour, *, image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """``collect`` on an active backend."""

    @abc.abstractmethod
    def infer_impl(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        """``infer`` on an active backend."""
