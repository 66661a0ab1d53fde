"""The tables the commands print: one function per typed result, to stdout (stderr when ``--json -``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prtk.core.console import print_table, speedup_text, stderr, stdout

if TYPE_CHECKING:
    from prtk.engines.benchmark import BenchResult
    from prtk.evaluation.report import EvalReport


def print_eval_table(report: EvalReport, to_stderr: bool) -> None:
    pruning = report.pruning
    scorer = pruning.scorer + (f" + {pruning.learnable_tokens} tokens" if pruning.learnable_tokens else "")
    stages = [(pruning.layer, pruning.keep, pruning.keep_count),
              *((stage.block, stage.keep, stage.keep_count) for stage in pruning.later_stages)]
    if pruning.later_stages:
        scorer += f" + {pruning.later_stages[0].scorer} stages"
    rows = [["unpruned", "1", str(report.architecture["num_patches"]), "-"],
            [scorer, *(" > ".join(f"{stage[column]:g}" for stage in stages) for column in (1, 2, 0))]]
    for row, result in zip(rows, (report.unpruned, report.pruned), strict=True):
        row += [f"{result.top1:.2f}", f"{result.top5:.2f}", f"{result.images_per_s:,.1f}", f"{result.gflops:.3f}"]
    print_table(f"{report.model} on {report.data_root} ({report.images} images)",
                ["model", "keep", "k", "layer", "top-1 %", "top-5 %", "images/s", "GFLOPs"], rows,
                console=stderr if to_stderr else stdout)
    if report.skipped_bad:
        stderr.print(f"skipped {len(report.skipped_bad)} unreadable images")


def print_export_table(records, source: str, to_stderr: bool) -> None:
    console = stderr if to_stderr else stdout
    names = [check.name for check in records[0].checks] if records and records[0].checks else []
    rows = []
    for record in records:
        artifact = record.artifact
        pruning, graph = artifact.pruning, artifact.graph
        size = sum(file.stat().st_size for file in record.files) / 2 ** 20
        fused = ", ".join(f"{count} {op}" for op, count in graph.fused_operators.items()) or "-"
        rows.append(["full" if pruning is None else f"{pruning.keep:g}",
                     "-" if pruning is None else str(pruning.keep_count), f"{artifact.gflops:.3f}",
                     f"{size:.1f}", artifact.optimize, str(graph.nodes), str(graph.nodes_per_block),
                     fused, *("pass" if check.passed else "FAIL" for check in record.checks)])
    print_table(f"ONNX exports (checks on {source})" if names else "ONNX exports (checks skipped)",
                ["keep", "k", "GFLOPs", "MiB", "level", "nodes", "per block", "fused", *names], rows,
                console=console)
    for record in records:
        for check in record.checks:
            console.print(f"{record.path.name}: {check.name}: {'pass' if check.passed else 'FAIL'}: {check.detail}",
                          soft_wrap=True)
        if (summary := record.artifact.accuracy_control_summary()) is not None:
            console.print(f"{record.path.name}: {summary}", soft_wrap=True)


def print_bench_table(result: BenchResult, to_stderr: bool) -> None:
    """One row per (artifact, backend, batch), p90 and p99 in the JSON only; ``(noise)`` marks a paired speedup more
    than 10% above its bound."""
    levels = len({row.optimize for row in result.rows}) > 1
    table = [[row.artifact, row.backend, row.variant + (f" {row.optimize}" if levels else ""), row.schedule,
              str(row.batch), f"{row.median_ms:.2f}", f"{row.images_per_s:,.1f}", f"{row.gflops:.3g}",
              speedup_text(row.paired_speedup, row.bound), f"{row.bound:.2f}x",
              *([speedup_text(row.paired_vs_baseline, row.baseline_bound),
                 "-" if row.baseline_bound is None else f"{row.baseline_bound:.2f}x"] if result.baseline else []),
              speedup_text(row.paired_vs_fastest_unpruned, None)] for row in result.rows]
    fastest = ", ".join(f"batch {batch}: {name}" for batch, name in result.fastest_unpruned.items())
    baseline = f"; baseline {result.baseline}" if result.baseline else ""
    print_table(f"{result.model} on {result.device} ({result.precision}){baseline}; fastest unpruned: {fastest}",
                ["artifact", "backend", "variant", "keep", "batch", "median ms", "images/s", "GFLOPs",
                 "speedup (paired)", "bound", *(["vs baseline (paired)", "its bound"] if result.baseline else []),
                 "vs fastest unpruned (paired)"],
                table, console=stderr if to_stderr else stdout)


def print_quickstart_table(summary: dict, to_stderr: bool) -> None:
    keeps = [f"{k:g}" for k in summary["config"]["keeps"]]
    rows = [[name, *(f"{points[k]:.2f}" for k in keeps)] for name, points in summary["accuracy"].items()]
    rows += [[f"{backend} speedup (batch {summary['speedup_batch']})",
              *(speedup_text(points[k], summary["bound"][k]) for k in keeps)]
             for backend, points in summary["speedup"].items()]
    rows.append(["cost-model bound", *(f"{summary['bound'][k]:.2f}x" for k in keeps)])
    rows += [[f"{backend} vs fastest unpruned ({summary['fastest_unpruned']})", *(f"{points[k]:.2f}x" for k in keeps)]
             for backend, points in summary["vs_fastest_unpruned"].items() if backend != "torch"]
    rows += [[f"validate {variant}", *("pass" if reports[k]["passed"] else "FAIL" for k in keeps)]
             for variant, reports in summary["validation"].items()]
    print_table(f"{summary['model']} quickstart (unpruned top-1 {summary['unpruned_top1']:.2f}%)",
                ["top-1 % / speed", *(f"keep {k}" for k in keeps)], rows, console=stderr if to_stderr else stdout)


def print_pack_table(meta: dict) -> None:
    metrics, cost = meta["metrics"], meta["predictor_cost"]
    rows = []
    for keep in (f"{k:g}" for k in meta["keep_ratios"]):
        tokens = metrics["tokens"][keep]
        rows.append([keep, str(tokens["keep_count"]), f"{metrics['predictor']['top_k_overlap'][keep]:.3f}",
                     f"{tokens['val_top1_no_tokens']:.2f}",
                     f"{tokens['val_top1']:.2f}" if "val_top1" in tokens else "-"])
    title = f"{meta['model']} pack: layer {meta['layer']}, {meta['training_data']['held_out']} held-out images"
    print_table(title, ["keep", "k", "top-k overlap", "top-1 %", f"top-1 % + {meta['num_tokens']} tokens"], rows,
                console=stderr)
    stderr.print(f"unpruned top-1 {metrics['unpruned_val_top1']:.2f}%, Kendall tau "
                 f"{metrics['predictor']['kendall_tau']:.3f}; predictor {cost['params']:,} parameters "
                 f"({100 * cost['params_ratio']:.2f}% of the tower's), {100 * cost['macs_ratio']:.2f}% of its MACs")
