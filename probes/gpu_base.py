"""What the GPU probes (probes/nvml.py, probes/amdsmi.py) share, whatever the vendor.

Terms:
- *query*: one call of the vendor library for one GPU, returning the values of one or
  more channels at once (memory used, total and percent from one call).
- *unsupported*: a reading the driver does not give for a GPU.  Found at ``open()``, its
  channels are left out; met during ``read()`` (a driver that stops answering), its
  channels read ``None`` and the probe goes on.
- *own process tree*: greenmon's processes (probes/proctree.py), whose GPU work is not
  background.

``GpuQueries`` keeps an opened probe's queries in channel order with how many channels
each fills, so ``read()`` returns one flat list however many GPUs and readings there are.
``GpuProbe`` is the rest both probes do alike: the process tree, reading, closing.  What
a vendor's errors mean is the probe's to say (``_read_error``), so each translates its own
library's codes and this module imports none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from greenmon.probes.base import Channel, ProbeUnavailable, Values
from greenmon.probes.proctree import ProcessTree

Query = Callable[[], tuple[float | None, ...]]

# What a probe makes of an exception a query raised during read(): None when the reading
# is not supported (any more), so its channels read None; otherwise the exception to raise
# (the very one it was given, for one that is not the vendor library's).
VendorError = Callable[[Exception], Exception | None]

# The channels one GPU answers, each group with the query that reads it.
GpuChannels = Callable[[int, Any], Sequence[tuple[Query, list[Channel]]]]


class Unsupported(Exception):
    """A reading the driver does not give for this GPU: its channels are left out."""


class GpuQueries:
    """The queries of an opened GPU probe, in channel order."""

    def __init__(self) -> None:
        self._queries: list[Query] = []
        self._widths: list[int] = []

    def open(
        self, gpus: Iterable[tuple[int, Any]], gpu_channels: GpuChannels, library: str
    ) -> list[Channel]:
        """Every channel the ``gpus`` (index, handle) answer, its query kept for ``read``;
        ProbeUnavailable when none answers anything (``library`` names the vendor's)."""
        self.clear()
        channels: list[Channel] = []
        for index, handle in gpus:
            for query, query_channels in gpu_channels(index, handle):
                self._queries.append(query)
                self._widths.append(len(query_channels))
                channels.extend(query_channels)
        if not channels:
            raise ProbeUnavailable(f"{library} supports none of the readings greenmon takes.")
        return channels

    def read(self, vendor_error: VendorError) -> Values:
        """One reading of every channel, in the order ``open`` returned them."""
        values: list[float | None] = []
        for query, width in zip(self._queries, self._widths, strict=True):
            try:
                values.extend(query())
            except Unsupported:
                values.extend([None] * width)
            except Exception as error:
                raised = vendor_error(error)
                if raised is None:
                    values.extend([None] * width)
                elif raised is error:
                    raise
                else:
                    raise raised from None
        return values

    def clear(self) -> None:
        self._queries, self._widths = [], []


class GpuProbe:
    """The vendor-free half of a GPU probe.  A subclass opens its library (setting
    ``_initialised``), fills ``_queries`` at ``open()``, and says what its library's errors
    mean during a read (``_read_error``) and how it shuts down (``_shut_down``)."""

    def __init__(self, proc_root: str, tree_pids: list[int] | None) -> None:
        self._initialised = False
        self._queries = GpuQueries()
        # the roots of greenmon's own process tree (None: this process)
        self._tree = ProcessTree(proc_root, tree_pids if tree_pids is not None else [os.getpid()])

    def _background_count(self, pids: Iterable[int]) -> float:
        """How many of the processes ``pids`` on a GPU are not greenmon's own."""
        return float(len(set(pids) - self._tree.pids()))

    def read(self) -> Values:
        return self._queries.read(self._read_error)

    def close(self) -> None:
        self._tree.close()
        self._queries.clear()
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(Exception):
                self._shut_down()

    def _read_error(self, error: Exception) -> Exception | None:
        """What ``error``, raised by a query during read(), means (``VendorError``)."""
        raise NotImplementedError

    def _shut_down(self) -> None:
        """Shut the vendor library down (its errors are ignored: the probe is closing)."""
        raise NotImplementedError
