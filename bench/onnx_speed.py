"""ONNX Runtime (CPU) latency of the pruned vs the unpruned export, measured in one run.

    python bench/onnx_speed.py [--model ViT-B-16] [--batch 32] [--keep 0.6] [--layer 3] [--runs 5] [--json FILE]

Exports both graphs with `prtk.export` (seeded random weights unless a weights option is given, the
cls-attention scorer: speed does not depend on the weights), opens one ONNX Runtime session each, and
alternates full / pruned runs so that machine noise hits both alike. Prints the medians and ``speedup X.XXx`` next to the cost-model bound.
"""

from __future__ import annotations

import tempfile

import numpy as np
import onnxruntime

from bench_cli import check_json, load_model, run
from prtk.export.exporter import ExportConfig, export_models
from prtk.pruning.tower import keep_count
from speed_report import report_speedup, seconds, speed_arguments


def main() -> None:
    parser = speed_arguments(__doc__)
    args = parser.parse_args()
    check_json(args)

    clip = load_model(args, random_by_default=True)
    config = ExportConfig(keeps=(args.keep,), layer=args.layer, full=True, check=False)
    size = clip.spec.image_size
    images = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        pruned, full = (record.path for record in export_models(clip, config, folder, None))
        sessions = {name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in (("full", full), ("pruned", pruned))}
        times = {name: [] for name in sessions}
        for session in sessions.values():  # warm-up: allocation and kernel choice stay out of the timings
            seconds(session.run, None, {"images": images})
        for _ in range(args.runs):
            for name, session in sessions.items():
                times[name].append(seconds(session.run, None, {"images": images}))
    report_speedup(f"{args.model} ONNX Runtime {onnxruntime.__version__} CPU, batch {args.batch}, layer {args.layer}, "
                   f"keep {args.keep} (k={keep_count(args.keep, clip.spec.num_patches)}), cls-attention, "
                   f"{args.runs} runs", times, clip.spec, args.keep, args.layer, args.batch, args,
                   vars(args) | {"onnxruntime": onnxruntime.__version__})


if __name__ == "__main__":
    run(main)
