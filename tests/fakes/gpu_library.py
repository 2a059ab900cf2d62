"""What the fake GPU libraries (tests/fakes/nvml.py, tests/fakes/amdsmi.py) share.

Each fake stands in for a vendor module: its constants as attributes, an init and a
shut-down, and functions taking a GPU handle (the fake GPU itself, a dataclass).  Common
to both: a call on a module that was not initialised, or of a function a GPU was told it
does not support (its ``not_supported`` set), fails with the vendor's own exception and
code; and the GPUs can live in a JSON file (``state_path``) so that a ``greenmon``
subprocess that changes a GPU and the test that looks at it see the same one.  What
differs (the exception's shape, the codes, the functions) stays in each fake.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

Gpu = TypeVar("Gpu")
Library = TypeVar("Library", bound="FakeGpuLibrary[Any]")


class FakeGpuLibrary(Generic[Gpu]):
    """The state both fakes keep; a subclass says how its vendor fails (``_error`` and the
    two codes) and may refuse a GPU for a reason of its own (``_refusal``)."""

    NOT_INITIALISED: ClassVar[int]
    NOT_SUPPORTED: ClassVar[int]

    def __init__(
        self,
        gpus: list[Gpu],
        *,
        constants: Mapping[str, Any],
        init_error: int | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.state_path = state_path
        self.initialised = False
        self.shutdowns = 0
        self.calls = 0
        for name, value in constants.items():
            setattr(self, name, value)

    def _error(self, code: int) -> Exception:
        """The vendor's exception for ``code``."""
        raise NotImplementedError

    def _refusal(self, gpu: Gpu) -> int | None:
        """A code every call on ``gpu`` fails with (None: it answers)."""
        return None

    def _start(self) -> None:
        if self.init_error is not None:
            raise self._error(self.init_error)
        self.initialised = True

    def _stop(self) -> None:
        self.initialised = False
        self.shutdowns += 1

    def _gpu(self, handle: Any, function: str) -> Gpu:
        """The GPU behind ``handle``, for a call of ``function``; the vendor's error where
        the module is not initialised, the GPU refuses, or it does not support it."""
        self.calls += 1
        if not self.initialised:
            raise self._error(self.NOT_INITIALISED)
        gpu: Gpu = handle
        refusal = self._refusal(gpu)
        if refusal is not None:
            raise self._error(refusal)
        if function in getattr(gpu, "not_supported", ()):
            raise self._error(self.NOT_SUPPORTED)
        return gpu

    def _save(self) -> None:
        if self.state_path is not None:
            self.state_path.write_text(json.dumps([_to_json(gpu) for gpu in self.gpus]))


def _to_json(gpu: Any) -> dict[str, Any]:
    row: dict[str, Any] = dataclasses.asdict(gpu)
    return {key: sorted(value) if isinstance(value, set) else value for key, value in row.items()}


def load_gpus(path: Path, gpu_type: type[Gpu]) -> list[Gpu]:
    """The GPUs ``_save`` wrote to ``path``, with the sets and tuples JSON turned into lists
    made sets and tuples again (by the dataclass's field types)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(gpu_type)}
    gpus = []
    for row in json.loads(path.read_text()):
        for name, value in row.items():
            if fields[name].startswith("set["):
                row[name] = set(value)
            elif fields[name].startswith("list[tuple["):
                row[name] = [tuple(entry) for entry in value]
        gpus.append(gpu_type(**row))
    return gpus


def file_backed(
    env: str,
    gpu_type: type[Gpu],
    first_gpu: Callable[[], Gpu],
    make: Callable[[list[Gpu], Path], Library],
) -> Library:
    """A fake whose GPUs live in the file named by $``env``: the ones there, or, when it is
    new, ``first_gpu()`` (written at once, so the test can read it)."""
    path = Path(os.environ[env])
    if path.exists():
        return make(load_gpus(path, gpu_type), path)
    library = make([first_gpu()], path)
    library._save()
    return library
