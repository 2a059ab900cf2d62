"""greenmon's MXNet worker: runs in MXNet's own environment (numpy < 1.24), driven by
greenmon's ``mxnet`` engine over a pipe.

Standalone on purpose: it imports nothing of greenmon (whose dependencies need numpy 2),
only the standard library, numpy, mxnet and onnx.

Protocol: one JSON object per line on stdin, one answer per line on stdout.
- ``{"op": "load", "onnx": PATH, "threads": N|null}`` -> ``{"ok": true, "details": {...}}``:
  ``mxnet.contrib.onnx.import_to_gluon`` makes a Gluon SymbolBlock of the ONNX graph.
- ``{"op": "load", "bert": SAFETENSORS, "config": {...}, "threads": N|null}``: a BERT
  sequence classifier in MXNet NDArray operators with the weights carried over from the
  safetensors file (MXNet's ONNX importer lacks LayerNormalization, Erf, Where, Expand
  and ConstantOfShape, which every BERT export holds).
- ``{"op": "forward", "inputs": {NAME: ARRAY}}`` -> ``{"ok": true, "logits": ARRAY,
  "start_ns": ..., "end_ns": ...}``: one forward pass, timed with CLOCK_MONOTONIC (the
  clock greenmon's records use; it is system-wide).
- ``{"op": "close"}`` -> ``{"ok": true}``, then the worker exits.
An ARRAY is ``{"dtype", "shape", "data": base64 of the C-order bytes}``.  A failure is
``{"ok": false, "error": TEXT, "operator": NAME|null}``; ``operator`` names an ONNX
operator MXNet's importer has no translation for.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import sys
import time
from typing import Any


def encode(array: Any) -> dict[str, Any]:
    import numpy as np

    array = np.ascontiguousarray(array)
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def decode(payload: dict[str, Any]) -> Any:
    import numpy as np

    data = base64.b64decode(payload["data"])
    return np.frombuffer(data, dtype=payload["dtype"]).reshape(payload["shape"])


def unsupported_operators(onnx_path: str) -> list[str]:
    """The graph's ONNX operators MXNet's importer cannot translate, in graph order."""
    import onnx
    from mxnet.contrib.onnx.onnx2mx._import_helper import _convert_map

    graph = onnx.load(onnx_path, load_external_data=False).graph
    missing: list[str] = []
    for node in graph.node:
        if node.op_type not in _convert_map and node.op_type not in missing:
            missing.append(node.op_type)
    return missing


def inline_weight_identities(graph: Any) -> int:
    """Replace each ``Identity`` of a weight by a copy of that weight under the Identity's
    output name; return how many.  The exporter shares one weight between uses through
    Identity nodes, which MXNet's importer turns into operators whose weights it then
    cannot find (a KeyError on the Identity's output)."""
    weights = {i.name: i for i in graph.initializer}
    kept, inlined = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            copy = graph.initializer.add()
            copy.CopyFrom(weights[node.input[0]])
            copy.name = node.output[0]
            inlined += 1
        else:
            kept.append(node)
    if inlined:
        del graph.node[:]
        graph.node.extend(kept)
    return inlined


def list_weights_as_inputs(graph: Any) -> int:
    """List every weight among the graph's inputs, as ONNX IR 3 did; return how many were
    added.  MXNet's importer finds weights only through the inputs (newer exporters leave
    them out, which IR 4 allows)."""
    from onnx import helper

    listed = {i.name for i in graph.input}
    added = 0
    for weight in graph.initializer:
        if weight.name not in listed:
            graph.input.append(
                helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims))
            )
            added += 1
    return added


def read_safetensors(path: str) -> dict[str, Any]:
    """The float32 tensors of a safetensors file, as numpy arrays (no library needed:
    an 8-byte header length, a JSON header, then the raw little-endian data)."""
    import numpy as np

    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        data = handle.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            raise ValueError(f"tensor {name} is {entry['dtype']}; the worker reads F32 only")
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(entry["shape"])
    return tensors


class Bert:
    """transformers' BertForSequenceClassification (post-norm, exact GELU), forward only."""

    def __init__(self, mx: Any, weights: dict[str, Any], config: dict[str, Any]) -> None:
        self.mx = mx
        self.w = {k: mx.nd.array(v) for k, v in weights.items()}
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {config.get('hidden_act')!r}: only exact gelu")

    def dense(self, x: Any, name: str) -> Any:
        weight = self.w[f"{name}.weight"]
        return self.mx.nd.FullyConnected(
            x, weight, self.w[f"{name}.bias"], num_hidden=weight.shape[0], flatten=False
        )

    def norm(self, x: Any, name: str) -> Any:
        return self.mx.nd.LayerNorm(
            x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], axis=-1, eps=self.eps
        )

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        nd = self.mx.nd
        batch, length = input_ids.shape
        positions = nd.arange(length).reshape((1, length))
        e = "bert.embeddings"
        x = (
            nd.take(self.w[f"{e}.word_embeddings.weight"], input_ids)
            + nd.take(self.w[f"{e}.position_embeddings.weight"], positions)
            + nd.take(self.w[f"{e}.token_type_embeddings.weight"], token_type_ids)
        )
        x = self.norm(x, f"{e}.LayerNorm")
        heads, size = self.heads, self.hidden // self.heads
        # transformers' additive mask: the float32 minimum where a key is padding.
        blocked = (1.0 - attention_mask.astype("float32")) * float(
            __import__("numpy").finfo("float32").min
        )
        blocked = blocked.reshape((batch, 1, 1, length)).broadcast_to(
            (batch, heads, 1, length)
        ).reshape((batch * heads, 1, length))

        def split(t: Any) -> Any:
            return t.reshape((batch, length, heads, size)).transpose((0, 2, 1, 3)).reshape(
                (batch * heads, length, size)
            )

        for i in range(self.layers):
            p = f"bert.encoder.layer.{i}"
            q = split(self.dense(x, f"{p}.attention.self.query"))
            k = split(self.dense(x, f"{p}.attention.self.key"))
            v = split(self.dense(x, f"{p}.attention.self.value"))
            scores = nd.batch_dot(q, k, transpose_b=True) / (size**0.5)
            probs = nd.softmax(nd.broadcast_add(scores, blocked), axis=-1)
            context = nd.batch_dot(probs, v).reshape((batch, heads, length, size))
            context = context.transpose((0, 2, 1, 3)).reshape((batch, length, self.hidden))
            x = self.norm(
                self.dense(context, f"{p}.attention.output.dense") + x,
                f"{p}.attention.output.LayerNorm",
            )
            inner = self.dense(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + nd.erf(inner / (2.0**0.5)))
            x = self.norm(self.dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        first = x[:, 0, :]
        pooled = nd.tanh(self.dense(first, "bert.pooler.dense"))
        return self.dense(pooled, "classifier")


class Worker:
    def __init__(self) -> None:
        self.net: Any = None
        self.input_names: list[str] = []
        self.mx: Any = None

    def load(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("threads"):
            os.environ["OMP_NUM_THREADS"] = str(int(request["threads"]))
        import mxnet as mx
        import onnx
        from mxnet.contrib import onnx as onnx_mxnet

        self.mx = mx
        if "bert" in request:
            start = time.perf_counter()
            self.net = Bert(mx, read_safetensors(request["bert"]), request["config"])
            self.input_names = ["input_ids", "attention_mask", "token_type_ids"]
            return {
                "ok": True,
                "details": {
                    "mxnet": mx.__version__,
                    "import_s": time.perf_counter() - start,
                    "route": "ndarray-bert (weights carried over)",
                    "inputs": self.input_names,
                    "hybridized": False,
                    "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                },
            }
        path = request["onnx"]
        missing = unsupported_operators(path)
        if missing:
            return {
                "ok": False,
                "error": f"MXNet {mx.__version__} cannot import ONNX operator "
                f"{', '.join(missing)} (mxnet.contrib.onnx has no translation for it)",
                "operator": missing[0],
            }
        start = time.perf_counter()
        model = onnx.load(path)
        graph = model.graph
        initialisers = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initialisers]
        if inline_weight_identities(graph) + list_weights_as_inputs(graph):
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "model.onnx")
                onnx.save(model, path)
                self.net = onnx_mxnet.import_to_gluon(path, ctx=mx.cpu())
        else:
            self.net = onnx_mxnet.import_to_gluon(path, ctx=mx.cpu())
        self.net.hybridize(static_alloc=True)
        return {
            "ok": True,
            "details": {
                "mxnet": mx.__version__,
                "import_s": time.perf_counter() - start,
                "route": "onnx (mxnet.contrib.onnx)",
                "inputs": self.input_names,
                "hybridized": True,
                "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            },
        }

    def forward(self, request: dict[str, Any]) -> dict[str, Any]:
        mx = self.mx
        arrays = {k: decode(v) for k, v in request["inputs"].items()}
        feed = [
            mx.nd.array(arrays[name], dtype=arrays[name].dtype)
            if name in arrays
            else mx.nd.zeros(arrays["input_ids"].shape, dtype="int64")  # one segment
            for name in self.input_names
        ]
        start_ns = time.monotonic_ns()
        output = self.net(*feed)
        if isinstance(output, (list, tuple)):
            output = output[0]
        logits = output.asnumpy()  # waits for MXNet's asynchronous engine
        end_ns = time.monotonic_ns()
        return {"ok": True, "logits": encode(logits), "start_ns": start_ns, "end_ns": end_ns}


def main() -> int:
    worker = Worker()
    out = sys.stdout
    # Anything MXNet prints goes to stderr; stdout carries the protocol only.
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "load":
                answer = worker.load(request)
            elif op == "forward":
                answer = worker.forward(request)
            elif op == "close":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}", "operator": None}
        except Exception as error:  # the answer carries it to greenmon, which reports it
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}", "operator": None}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
