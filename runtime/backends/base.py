"""The interface every backend offers the scheduler (architecture.md, "Backends").

A backend is a runner in Polygraphy's sense: constructed cheaply, activated as a
context manager (sessions, engines, streams are created in ``activate``), then
driven by the scheduler through two calls that mirror the two graphs of a bundle.
The scheduler never knows which backend it drives.
"""

from __future__ import annotations

import abc
from types import TracebackType

import numpy as np

from dnrt.bundle import Bundle
from dnrt.semantics import CollectFlavour


class Backend(abc.ABC):
    #: Short name used on the command line (``--backend``).
    name: str = ""
    #: Whether ``collect`` and ``infer`` may run at the same time from two threads
    #: (GPU backends: one CUDA stream per pass), letting streaming overlap them.
    concurrent_passes: bool = False

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.active = False
        #: The graphs coming runs will use (``expect_graphs``); ``None``: not said.
        self.expected_graphs: frozenset[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def expect_graphs(self, graphs: frozenset[str]) -> None:
        """Say which graphs the coming runs use, before ``activate``: ``"stats"`` (collect with
        the image: IN), ``"collect"`` (statistics only: KIN, DN, TIN's thumbnail) and
        ``"dense"`` (the second pass). A backend that loads a session or engine per graph
        loads exactly these when activated: nothing is built for a graph the mode never runs,
        and a broken graph it does run is reported before any output exists."""
        self.expected_graphs = frozenset(graphs)

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False

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

    def describe(self) -> str:
        """One line for logs and benchmark output: which library, which device."""
        return self.name

    # -- the two passes ----------------------------------------------------------------
    @abc.abstractmethod
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

    @abc.abstractmethod
    def infer(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        """Run the DenseNorm graph: ``nbr_mean``/``nbr_std`` are ``[N, L, 3, 3]`` float32
        (already sanitized and floored). Returns ``image [N, Cout, S, S]`` float32."""
