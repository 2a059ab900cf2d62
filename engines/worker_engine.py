"""Engines that run in another Python environment, in a worker process driven over a pipe.

Terms:
- *worker*: a child process of greenmon started from another interpreter, reading one
  JSON request per line on its stdin and answering one JSON line on its stdout (its
  stderr is greenmon's).  Being greenmon's child, its process tree is counted as
  greenmon's own by the interference and CPU figures (greenmon/probes/proctree.py follows
  descendants).
- ``mxnet`` (``MxnetEngine``): greenmon exports the model to ONNX (the onnx engine's
  export, cached) and preprocesses each batch here, in greenmon's environment; the worker
  (engines/mxnet_worker.py, in the environment ``greenmon engines install mxnet`` makes)
  imports the graph with ``mxnet.contrib.onnx`` into a hybridised Gluon block and runs
  the forward passes.  Same phases (load, warm-up, measure, teardown) and the same label
  records as every engine, so fidelity compares its labels with torch's.  An ONNX
  operator MXNet cannot import is named in the load error.
- *remote engine* (``RemoteEngine``): any greenmon engine run by another interpreter
  (a plan's ``[engines.<name>] python = ...``): the worker is engines/engine_worker.py,
  which imports greenmon from this greenmon's source folder and drives the named engine
  there; prompts go in and request records come back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from greenmon.engines._cache import cached_export, library_versions
from greenmon.engines._classify import (
    Preprocessor,
    classifier_inputs,
    is_classifier,
    label_records,
    load_preprocessor,
)
from greenmon.engines._common import as_model, check_options, check_provider
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from greenmon.errors import EngineError
from greenmon.models import model_architecture

HERE = Path(__file__).resolve().parent
MXNET_WORKER = HERE / "mxnet_worker.py"
MXNET_OPTIONS: dict[str, object] = {"threads": None}


class WorkerProcess:
    """A worker child process and its JSON-lines pipe."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=dict(env) if env is not None else None,
            )
        except OSError as error:
            raise EngineError(
                f"could not start the engine worker {argv[0]}: {error}",
                title="Engine worker not started",
            ) from error

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def call(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and read its answer; a dead worker is an EngineError."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            line = stdout.readline()
        except (BrokenPipeError, OSError) as error:
            line = ""
            del error
        if not line:
            code = self.process.wait(timeout=10)
            raise EngineError(
                f"the engine worker exited (code {code}) during {request.get('op')!r}; "
                "its messages are above, on greenmon's stderr",
                title="Engine worker failed",
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(EngineError):
                self.call({"op": "close"})
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _encode(array: Any) -> dict[str, Any]:
    import base64

    import numpy as np

    array = np.ascontiguousarray(array)
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(payload: Mapping[str, Any]) -> Any:
    import base64

    import numpy as np

    data = base64.b64decode(payload["data"])
    return np.frombuffer(data, dtype=payload["dtype"]).reshape(payload["shape"])


def _is_bert(model_path: Path) -> bool:
    config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    return config.get("model_type") == "bert" and (model_path / "model.safetensors").is_file()


class MxnetEngine:
    name: ClassVar[str] = "mxnet"
    providers: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, cache_dir: str | None = None, python: str | None = None) -> None:
        self.cache_dir = cache_dir
        self.python = python
        self._worker: WorkerProcess | None = None
        self._pre: Preprocessor | None = None

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        check_provider(self.name, provider, self.providers)
        opts = check_options(self.name, options, MXNET_OPTIONS)
        info = as_model(model, self.cache_dir)
        architecture = model_architecture(info.path)
        if not is_classifier(architecture):
            raise EngineError(
                f"the mxnet engine serves classifiers (text and image), not {architecture} "
                f"models ({info.spec}): MXNet's ONNX importer has no KV-cache generation",
                title="Model not loadable",
            )
        from greenmon.engines.environments import env_python, recorded_versions

        python = self.python or str(env_python("mxnet", self.cache_dir))
        if self.python is None and not recorded_versions("mxnet", self.cache_dir):
            raise EngineError(
                "MXNet's environment is not installed: run `greenmon engines install mxnet`",
                title="Engine not installed",
            )
        from greenmon.engines.onnx_engine import EXPORT_LIBRARIES, export_onnx

        # The onnx engine's export (same cache entry): MXNet runs the graph ONNX Runtime runs.
        export = None
        if not _is_bert(info.path):
            export = cached_export(
                info, "onnx", {}, library_versions(*EXPORT_LIBRARIES), export_onnx,
                cache_dir=self.cache_dir,
            )
        start_s = time.perf_counter()
        self._pre = load_preprocessor(info, architecture)
        self._worker = WorkerProcess([python, str(MXNET_WORKER)])
        route = self._route(info.path, export.path if export else None)
        answer = self._worker.call({**route, "threads": opts["threads"]})
        if not answer.get("ok"):
            self.close()
            raise EngineError(
                f"MXNet could not load {info.spec}: {answer.get('error')}",
                title="Model not loadable",
            )
        return LoadInfo(
            export_s=export.export_s if export else 0.0,
            load_s=time.perf_counter() - start_s,
            export_cache_hit=export.cache_hit if export else False,
            details={
                "architecture": architecture,
                "worker_python": python,
                "worker_pid": self._worker.pid,
                "export_dir": str(export.path) if export else None,
                "threads": opts["threads"],
                "model_fingerprint": info.fingerprint,
                **dict(answer.get("details", {})),
            },
        )

    @staticmethod
    def _route(model_path: Path, export_path: Path | None) -> dict[str, Any]:
        """How the model reaches MXNet: a BERT through MXNet operators with its weights
        carried over (MXNet's ONNX importer cannot take a BERT export), anything else
        through the ONNX export."""
        if export_path is None:
            config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
            return {"op": "load", "bert": str(model_path / "model.safetensors"),
                    "config": config}  # fmt: skip
        return {"op": "load", "onnx": str(export_path / "model.onnx")}

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        if self._worker is None or self._pre is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        inputs = classifier_inputs(self._pre, prompts)
        answer = self._worker.call(
            {"op": "forward", "inputs": {k: _encode(v) for k, v in inputs.items()}}
        )
        if not answer.get("ok"):
            raise EngineError(
                f"MXNet forward pass failed: {answer.get('error')}", title="Engine failed"
            )
        logits = _decode(answer["logits"])
        return label_records(
            self._pre, prompts, inputs, logits, int(answer["start_ns"]), int(answer["end_ns"])
        )

    def close(self) -> None:
        worker, self._worker = self._worker, None
        self._pre = None
        if worker is not None:
            worker.close()


class RemoteEngine:
    """A greenmon engine run by another interpreter (``[engines.<name>] python = ...``)."""

    name: ClassVar[str] = "remote"
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "tensorrt")

    def __init__(
        self,
        engine: str,
        python: str,
        cache_dir: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.engine = engine  # a name get_engine knows, or "module:Class"
        self.python = python
        self.cache_dir = cache_dir
        self.extra_env = dict(extra_env or {})
        self._worker: WorkerProcess | None = None

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        info = as_model(model, self.cache_dir)
        env = dict(os.environ)
        # The worker imports greenmon from this greenmon's source folder, so the other
        # environment needs only the engine's own libraries.
        spec = importlib.util.find_spec("greenmon")  # already loaded: this process runs it
        assert spec is not None and spec.origin is not None
        package_root = str(Path(spec.origin).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        env.update(self.extra_env)
        self._worker = WorkerProcess(
            [self.python, "-m", "greenmon.engines.engine_worker"], env=env
        )
        answer = self._worker.call(
            {
                "op": "load",
                "engine": self.engine,
                # The spec, not the path: the worker resolves it to the same files and the
                # same fingerprint (a built-in's includes its recipe's revision).
                "model": info.spec,
                "provider": provider,
                "options": dict(options),
                "cache_dir": self.cache_dir,
            }
        )
        if not answer.get("ok"):
            self.close()
            raise EngineError(
                f"{self.engine} in {self.python}: {answer.get('error')}",
                title=str(answer.get("title") or "Model not loadable"),
            )
        load = answer["load"]
        return LoadInfo(
            export_s=float(load["export_s"]),
            load_s=float(load["load_s"]),
            export_cache_hit=bool(load["export_cache_hit"]),
            details={**load["details"], "worker_python": self.python,
                     "worker_pid": self._worker.pid},
        )  # fmt: skip

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        if self._worker is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        answer = self._worker.call(
            {
                "op": "generate",
                "prompts": [
                    [p.prompt_id, p.text, p.task, list(p.references)] for p in prompts
                ],
                "max_new_tokens": max_new_tokens,
            }
        )
        if not answer.get("ok"):
            raise EngineError(
                f"{self.engine} in {self.python}: {answer.get('error')}",
                title=str(answer.get("title") or "Engine failed"),
            )
        return [
            RequestRecord(**{**record, "output_ids": tuple(record["output_ids"])})
            for record in answer["records"]
        ]

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()


class TensorflowEngine(RemoteEngine):
    """The ``tensorflow`` engine (greenmon/engines/tensorflow_engine.py) in a worker process
    of greenmon's own interpreter: transformers turns TensorFlow on there only, and
    TensorFlow's thread pools and memory end with the worker at teardown."""

    name: ClassVar[str] = "tensorflow"
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, cache_dir: str | None = None) -> None:
        super().__init__(
            "greenmon.engines.tensorflow_engine:TensorflowEngine",
            sys.executable,
            cache_dir,
            extra_env={"USE_TF": "1", "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        from greenmon.engines.tensorflow_engine import OPTIONS

        check_provider(self.name, provider, self.providers)
        check_options(self.name, options, OPTIONS)
        return super().load(model, provider, options)
