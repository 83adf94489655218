"""Traced ONNX graphs kept between exports of the same architecture (export.graph_cache).

torch's dynamo export traces the model, decomposes it and optimises the graph: about 6 s of the export stage for
MiniLM, the same work every night for the same architecture. What changes between two nightly runs is only the
weights. After a fresh export, the graph is kept without its weights under `~/.cache/nlpops/onnx-graphs/<key>/`
(XDG_CACHE_HOME; per machine, like the database templates of pipelines/db_templates.py: it holds no weights and no
data, so a new project of the same architecture reuses it too), with a map from each weight initializer to the model
tensor it holds (the exporter names most initializers like the parameters; the ones it folded, such as Linear
weights stored transposed for MatMul, are matched by value). The next export of a model with the same key writes the
new weights into that graph instead of tracing.

The key covers what shapes the traced graph: the wrapper module's class and the source of the file defining it,
every submodule's class and plain settings, the model config, the names, shapes and dtypes of parameters and
buffers, the inputs and their dynamic axes, the opset and the versions of torch, transformers, onnx and onnxscript.
A graph that cannot be mapped (an initializer that is neither a model tensor nor a small constant, or one matching
several tensors, or a model with two equal tensors, which the exporter merges into one initializer) is not kept.

The entry also keeps model.onnx after the export stage's transformer fusion (a variant named after the fusion
code's digest), mapped the same way: the fused attention's query, key and value weights are one initializer, the
three tensors side by side ("concat" slots). A rerun then writes the weights into the fused graph and skips both the
trace and the fusion (about 1 s for MiniLM).

The export stage's parity check against PyTorch runs on a cached graph as on a fresh one; when it fails the entry is
dropped and the graph exported afresh (pipelines.export_onnx.export_onnx). A filled graph is byte-identical to a
fresh export (and fusion) of the same weights (tested), so the served file and its digest do not depend on the
cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pipelines.tasks.base import ExportSpec

FORMAT = 1
KEEP_ENTRIES = 16  # most recently used graphs kept (each is the graph without weights: ~80 KB for MiniLM)
SMALL_CONSTANT = 16  # initializers of at most this many elements that match no tensor are the graph's constants
GRAPH_FILE = "graph.onnx"
SLOTS_FILE = "slots.json"


def _files(variant: str) -> tuple[str, str]:
    """The graph and slot-map file names of a variant of an entry's graph ("" = as traced; "fused-<digest>" = after
    the export stage's transformer fusion, pipelines/export_onnx.py)."""
    return (GRAPH_FILE, SLOTS_FILE) if not variant else (f"{variant}.onnx", f"{variant}.slots.json")


def machine_cache_dir() -> Path:
    from pipelines.db_templates import cache_dir

    return cache_dir() / "onnx-graphs"


def _versions() -> dict[str, str]:
    """The installed versions of what traces and fuses the graph, from the packages' metadata: importing onnxscript
    only to read its version took 0.5 s of an export that reuses its graphs."""
    import importlib.metadata

    versions = {}
    for name in ("torch", "transformers", "onnx", "onnxscript"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _source_digest(cls: type) -> str:
    try:
        source = inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError):
        source = cls.__module__ + "." + cls.__qualname__
    return hashlib.sha256(source.encode()).hexdigest()


def _model_config(module: Any) -> dict[str, Any]:
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            data = _without_paths(config.to_dict())
            data["_attn_implementation"] = getattr(config, "_attn_implementation", None)
            return data
    return {}


def _without_paths(value: Any) -> Any:
    """A config dict without `_name_or_path` at any depth (an encoder-decoder nests its halves' configs): where
    the weights were loaded from does not shape the graph."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "_name_or_path"}
    return value


def _tensors(module: Any) -> dict[str, Any]:
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    return tensors


def _constant_buffers(module: Any) -> set[str]:
    """Non-persistent buffers (position ids...): never saved, rebuilt from the config, so the same in every model
    the key admits; equal ones (an encoder's and a decoder's) may share one initializer."""
    names = set()
    for prefix, sub in module.named_modules():
        for name in getattr(sub, "_non_persistent_buffers_set", ()):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def _plain_attributes(module: Any) -> list[tuple[str, str, Any]]:
    """Every submodule's own plain settings (numbers, strings, flags, tuples of them): a wrapper's constant
    (a bias, a length) is traced into the graph like code."""
    plain = (bool, int, float, str, type(None))
    found = []
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if name.startswith("_") or name in ("training", "name_or_path"):  # not traced: where it was loaded from
                continue
            if isinstance(value, plain) or (
                isinstance(value, (tuple, list)) and all(isinstance(v, plain) for v in value)
            ):
                found.append((prefix, name, value))
    return found


def graph_key(spec: ExportSpec, opset: int) -> str:
    """What the traced graph depends on besides the weights' values, hashed."""
    from pipelines import export_onnx

    module = spec.module
    facts = {
        "format": FORMAT,
        "wrapper": f"{type(module).__module__}.{type(module).__qualname__}",
        "wrapper_source": _source_digest(type(module)),
        "exporter_source": hashlib.sha256(inspect.getsource(export_onnx.export_model_to_onnx).encode()).hexdigest(),
        "modules": [f"{type(m).__module__}.{type(m).__qualname__}" for m in module.modules()],
        "config": _model_config(module),
        "attributes": _plain_attributes(module),
        "tensors": [(name, list(t.shape), str(t.dtype)) for name, t in _tensors(module).items()],
        "inputs": spec.input_names,
        "outputs": spec.output_names,
        "dynamic_axes": {k: {str(a): label for a, label in v.items()} for k, v in spec.dynamic_axes.items()},
        "examples": [(list(x.shape), str(x.dtype)) if hasattr(x, "shape") else repr(x) for x in spec.example_inputs],
        "opset": int(opset),
        "versions": _versions(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class GraphCache:
    """One folder of weight-less traced graphs (one per key) and their weight maps."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    # ------------------------------------------------------------------ reuse

    def fill(self, key: str, spec: ExportSpec, onnx_path: Path, variant: str = "") -> bool:
        """Write onnx_path from the cached graph of `key` (spec's graph_key; `variant`: see _files) with
        spec.module's weights; False when there is none (or it cannot be read: then the entry is dropped)."""
        folder = self.entry(key)
        graph_file, slots_file = _files(variant)
        if not (folder / slots_file).is_file() or not (folder / graph_file).is_file():
            return False
        try:
            import numpy as np
            import onnx
            from onnx import helper

            slots = json.loads((folder / slots_file).read_text(encoding="utf-8"))
            model = onnx.load(str(folder / graph_file))
            tensors = _tensors(spec.module)
            filled = 0
            for init in model.graph.initializer:
                slot = slots.get(init.name)
                if slot is None:
                    continue
                array = _slot_value(slot, tensors, np)
                dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
                if list(array.shape) != list(init.dims) or array.dtype != dtype:
                    raise ValueError(f"{init.name}: {slot} is {array.shape} {array.dtype}, the graph wants {init.dims}")
                init.raw_data = np.ascontiguousarray(array).tobytes()
                filled += 1
            if filled != len(slots):
                raise ValueError(f"{filled} of {len(slots)} weight initializers found in the graph")
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(model, str(onnx_path))
        except Exception:  # a damaged or foreign entry: forget it, export afresh
            self.drop(key)
            return False
        os.utime(folder)  # most recently used
        return True

    def graph_file(self, key: str, variant: str = "") -> Path:
        """The weight-less graph of an entry (its operators can be counted without the weights)."""
        return self.entry(key) / _files(variant)[0]

    def drop(self, key: str) -> None:
        shutil.rmtree(self.entry(key), ignore_errors=True)

    # ------------------------------------------------------------------ keeping

    def remember(self, key: str, spec: ExportSpec, onnx_path: Path, variant: str = "") -> bool:
        """Keep onnx_path's graph under `key` (spec's graph_key) without its weights, mapped to spec.module's
        tensors; False when it cannot be mapped (nothing is kept). A `variant` (see _files) is kept only next to
        the traced graph of its key."""
        import numpy as np
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(onnx_path))
        tensors = {name: t.detach().cpu().numpy() for name, t in _tensors(spec.module).items()}
        slots = _weight_slots(model, tensors, np, numpy_helper, _constant_buffers(spec.module))
        if slots is None:
            return False
        for init in model.graph.initializer:
            if init.name in slots:
                init.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    init.ClearField(field)  # type: ignore[arg-type]
        if variant:
            return self._keep_variant(key, variant, model, slots)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            onnx.save_model(model, str(tmp / GRAPH_FILE))
            (tmp / SLOTS_FILE).write_text(json.dumps(slots, indent=1, sort_keys=True), encoding="utf-8")
            final = self.entry(key)
            if not (final / SLOTS_FILE).is_file():  # else another run kept it meanwhile: it may be reading it
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.prune()
        return True

    def _keep_variant(self, key: str, variant: str, model: Any, slots: dict[str, Any]) -> bool:
        import onnx

        folder = self.entry(key)
        if not (folder / SLOTS_FILE).is_file():
            return False
        graph_file, slots_file = _files(variant)
        family = variant.split("-")[0]
        for stale in folder.glob(f"{family}-*"):  # the same variant from older fusion code: never read again
            if not stale.name.startswith(f"{variant}."):
                stale.unlink(missing_ok=True)
        from pipelines.statedir import atomic_write

        # The graph first: fill reads a variant only once its map is there.
        atomic_write(folder / graph_file, lambda path: onnx.save_model(model, str(path)))
        text = json.dumps(slots, indent=1, sort_keys=True)

        def write_slots(path: Path) -> None:
            path.write_text(text, encoding="utf-8")

        atomic_write(folder / slots_file, write_slots)
        return True

    def prune(self, keep: int = KEEP_ENTRIES) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            shutil.rmtree(old, ignore_errors=True)


def _weight_slots(
    model: Any,
    tensors: dict[str, Any],
    np: Any,
    numpy_helper: Any,
    constants: Collection[str] = (),
) -> dict[str, list[Any]] | None:
    """{initializer: [tensor name, "same" | "transpose"]} for every initializer holding a model tensor (by name, else
    by value), or ["concat", axis, [[tensor name, how]...]] for one holding several side by side (_concatenated);
    None when an initializer larger than a small constant matches no tensor (nor a concatenation), or several, or
    when two model tensors are equal (the exporter merges equal initializers: another model's weights would not
    fit), unless both are `constants` (non-persistent buffers, the same in every model of the key)."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    contents: set[tuple[Any, ...]] = set()
    for name, array in tensors.items():
        by_shape.setdefault(tuple(array.shape), []).append(name)
        if name in constants:
            continue
        digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()
        if (array.shape, array.dtype.str, digest) in contents:
            return None  # two equal tensors (fresh biases...): the exporter keeps one initializer for both
        contents.add((array.shape, array.dtype.str, digest))

    def matches(value: Any) -> list[list[str]]:
        hits = [
            [name, "same"]
            for name in by_shape.get(tuple(value.shape), [])
            if tensors[name].dtype == value.dtype and np.array_equal(tensors[name], value)
        ]
        if value.ndim == 2:
            hits += [
                [name, "transpose"]
                for name in by_shape.get(tuple(value.shape[::-1]), [])
                if tensors[name].dtype == value.dtype and np.array_equal(tensors[name].T, value)
            ]
        if len(hits) > 1 and all(name in constants for name, _ in hits):
            hits = hits[:1]  # equal constant buffers merged into one initializer: any of them fills it
        return hits

    slots: dict[str, list[Any]] = {}
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        own = tensors.get(init.name)
        if own is not None and own.shape == value.shape and own.dtype == value.dtype and np.array_equal(own, value):
            slots[init.name] = [init.name, "same"]
            continue
        if value.size <= SMALL_CONSTANT:
            continue  # a constant of the graph (shape values, scalars); small weights keep their names
        hits = matches(value)
        if not hits:
            parts = _concatenated(value, matches, np)
            if parts is not None:
                slots[init.name] = ["concat", *parts]
                continue
        if len(hits) != 1:
            return None  # weight-sized data that is no single model tensor: this graph cannot be refilled
        slots[init.name] = hits[0]
    return slots


def _concatenated(value: Any, matches: Any, np: Any) -> list[Any] | None:
    """[axis, [tensor, how]...] when value is equal pieces, each one model tensor, side by side along axis (a fused
    attention's query, key and value weights in one matrix); else None."""
    for axis in reversed(range(value.ndim)):
        for pieces in (3, 2, 4):
            if value.shape[axis] % pieces:
                continue
            found = [matches(part) for part in np.split(value, pieces, axis=axis)]
            if all(len(hits) == 1 for hits in found):
                return [axis, [hits[0] for hits in found]]
    return None


def _slot_value(slot: list[Any], tensors: dict[str, Any], np: Any) -> Any:
    """The array a slot holds: [tensor, "same" | "transpose"] or ["concat", axis, [[tensor, how]...]]."""
    if slot[0] == "concat":
        _, axis, parts = slot
        return np.concatenate([_slot_value(part, tensors, np) for part in parts], axis=int(axis))
    name, how = slot
    array = tensors[name].detach().cpu().numpy()
    return array.T if how == "transpose" else array
