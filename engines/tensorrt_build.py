"""Build serialized TensorRT engines from exported ONNX graphs: which graphs, at which precision, written where.

The build itself is Polygraphy's (``prtk.engines.tensorrt_adapter``, the one module that reaches TensorRT): the
network parsed from the ONNX file, one optimisation profile over ``batch = MIN:OPT:MAX`` with every other dimension
as exported, fp16 / bf16 / int8 as asked while LayerNorm, softmax and reductions stay fp32, and a timing cache
shared by the builds of one folder, read before and updated after each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import onnx

from prtk.core.files import (check_distinct_outputs, check_not_an_input, check_writable, commit_together,
                             folder_writer_lock, write_bytes_atomic, write_json_atomic)
from prtk.core.errors import PrtkInputError
from prtk.export.artifact import Artifact
from prtk.export.onnx_graph import custom_domains, load_graph

from .tensorrt_adapter import build_engine_bytes, require_tensorrt

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class EngineConfig:
    """``precision`` (int8: explicit quantization from a Q/DQ graph, its float layers in fp16); ``batch`` (min, opt,
    max); ``workspace_gib`` the builder's scratch limit; ``timing_cache`` a file reused across builds (None: none)."""

    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 8, 32)
    workspace_gib: float = 4.0
    timing_cache: str | None = None

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise PrtkInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        low, opt, high = self.batch
        if not 1 <= low <= opt <= high:
            raise PrtkInputError(f"--batch must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {low}:{opt}:{high}")
        if self.workspace_gib <= 0:
            raise PrtkInputError(f"workspace must be positive, got {self.workspace_gib} GiB")


def parse_batch_profile(text: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise PrtkInputError(f"--batch must be MIN:OPT:MAX, e.g. 1:8:32, got {text!r}") from None
    return low, opt, high


def engine_path(onnx_path: Path, precision: str) -> Path:
    """``model_keep0.60.onnx`` -> ``model_keep0.60_fp16.engine`` beside it (``model_keep0.60_fp16.onnx`` ->
    ``model_keep0.60_fp16_fp16.engine``, so that the engine's sidecar never replaces the ONNX's)."""
    return onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")


def engine_sources(target: str | Path, precision: str, force: bool, timing_cache: str | None = None) -> list[Path]:
    """The ONNX files to build from ``target`` (a file, or every ``.onnx`` in a folder), after refusing engine
    outputs that exist without ``force``, would replace an input, or are the ``timing_cache`` file."""
    target = Path(target)
    sources = sorted(target.glob("*.onnx")) if target.is_dir() else [target]
    if not sources or not all(path.is_file() for path in sources):
        raise PrtkInputError(f"no ONNX file at {target}")
    outputs: list[tuple[str, Path | str | None]] = [("--timing-cache", timing_cache)]
    for source in sources:
        check_buildable(source, precision)
        engine = engine_path(source, precision)
        inputs = {"ONNX": source, "ONNX sidecar": source.with_suffix(".json")}
        check_not_an_input(timing_cache or source.parent / "timing.cache", inputs)
        for output in (engine, engine.with_suffix(".json")):
            check_not_an_input(output, inputs)
            check_writable(output, force)
            outputs.append(("the engine" if output == engine else "the engine's sidecar", output))
    check_distinct_outputs(outputs)
    return sources


def check_buildable(onnx_path: Path, precision: str) -> tuple[Artifact, onnx.ModelProto]:
    """Refuse, in one line, a graph TensorRT cannot build at ``precision``: operators outside ONNX's own domain
    (``--optimize O2``), dynamic quantization (``--quantize int8-dynamic``), an int8 build from a graph without
    Q/DQ nodes (TensorRT 10 builds int8 from explicit quantization only), a float build from a Q/DQ graph, a graph
    whose description does not list TensorRT among its runtimes (its export's TensorRT check failed), and a
    sidecar that is not the graph's own description. Returns the artifact and the graph, as read."""
    artifact = Artifact.read(onnx_path)
    model = load_graph(onnx_path)
    domains = custom_domains(model)
    if domains:
        raise PrtkInputError(f"{onnx_path.name} holds {', '.join(domains)} operators (exported with --optimize O2, "
                             "for ONNX Runtime only): TensorRT cannot build it; export with --optimize O1")
    ops = {node.op_type for node in model.graph.node}
    if ops & {"DynamicQuantizeLinear", "MatMulInteger"}:
        raise PrtkInputError(f"{onnx_path.name} is dynamically quantized (--quantize int8-dynamic, for ONNX Runtime "
                             "and OpenVINO): TensorRT cannot build it; export with --quantize int8-static")
    if precision == "int8" and not QDQ_OPS <= ops:
        raise PrtkInputError(f"{onnx_path.name} has no Q/DQ nodes: an int8 engine is built from explicit "
                             "quantization; export with --quantize int8-static --calib-data DIR")
    if precision != "int8" and QDQ_OPS <= ops:
        raise PrtkInputError(f"{onnx_path.name} is a Q/DQ (int8-static) graph: build it with --precision int8")
    if "tensorrt" not in artifact.runtimes:
        failed = artifact.failed_check("tensorrt")
        raise PrtkInputError(f"{onnx_path.name} is not for TensorRT (its runtimes: "
                             f"{', '.join(artifact.runtimes) or 'none'})"
                             + (f": its export's TensorRT check failed ({failed.detail})" if failed else ""))
    return artifact, model


def build_engines(sources: list[Path], config: EngineConfig, force: bool = False) -> Iterator[Path]:
    """Build one engine per ONNX file in ``sources``, sharing one timing cache (default ``timing.cache`` beside
    the first); yields each engine's path as it is written. Needs TensorRT and a GPU."""
    require_tensorrt()
    cache = config.timing_cache or str(sources[0].parent / "timing.cache")
    for source in sources:
        with folder_writer_lock(source.parent, "build-engine"):
            yield build_engine(source, replace(config, timing_cache=cache), force)


def build_engine(onnx_path: str | Path, config: EngineConfig, force: bool = False) -> Path:
    """Build, serialize and write the engine and its sidecar (the ONNX sidecar plus TensorRT's facts)."""
    config.check()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PrtkInputError(f"ONNX file not found: {onnx_path}")
    artifact, model = check_buildable(onnx_path, config.precision)
    out = check_writable(engine_path(onnx_path, config.precision), force)
    check_writable(out.with_suffix(".json"), force)
    image = model.graph.input[0]
    shape = tuple(dim.dim_value for dim in image.type.tensor_type.shape.dim)[1:]
    cache = Path(config.timing_cache) if config.timing_cache else None
    built = build_engine_bytes(onnx_path, image.name, shape, config.precision, config.batch, config.workspace_gib,
                               cache)
    write_engine(out, built.engine, artifact.engine_description(out.name, {
        "version": built.tensorrt_version, "gpu": built.gpu, "compute_capability": built.compute_capability,
        "builder": built.builder, "precision": config.precision,
        "batch_profile": dict(zip(("min", "opt", "max"), config.batch, strict=True)),
        "workspace_gib": config.workspace_gib}))
    return out


def write_engine(out: Path, engine: bytes, sidecar: dict) -> None:
    """Write a serialized engine and its sidecar to a staging folder beside ``out``, then move the pair into place
    together (``commit_together``): an engine is never found beside another engine's sidecar."""
    staging = out.with_name(f".{out.stem}.staging")
    staging.mkdir(exist_ok=True)
    staged = (staging / out.name, staging / out.with_suffix(".json").name)
    write_bytes_atomic(staged[0], engine)
    write_json_atomic(staged[1], sidecar)
    commit_together(out.stem, [(staged[0], out), (staged[1], out.with_suffix(".json"))])
    staging.rmdir()
