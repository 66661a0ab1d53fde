"""Nothing lost under concurrency, self-overwrite and kills: two real `prtk export` processes on one folder, an
output that is another output of the same command, a killed int8 export's temporary files, a ranking resumed with
another thread count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SimulatedKill, assert_one_line_error
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.export.artifact import Artifact

SHAPES = "prtk-testbed-shapes"


def prtk_process(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prtk.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"{what}: the process ended first ({process.stderr.read()[-2000:]})"
        assert time.monotonic() < deadline, f"{what}: timed out"
        time.sleep(0.005)


def test_a_second_export_into_a_folder_being_written_is_refused(tmp_path):
    """Process A is stopped (SIGSTOP) while it holds the folder; process B, exporting other keep ratios into it, is
    refused in one line and writes nothing; A, continued, writes every pair it was asked for."""
    out = tmp_path / "onnx"
    first = prtk_process("export", "--model", SHAPES, "--keep", "0.3,0.4,0.5,0.6,0.7", "--full", "--out", out)
    wait_for(lambda: (out / ".prtk-writer.lock").exists(), first, "the first export takes the folder")
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run([sys.executable, "-m", "prtk.cli", "export", "--model", SHAPES, "--keep", "0.8",
                                 "--out", out], capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (f"prtk export: error: another prtk command is writing {out}: wait for it to "
                                     "finish, or export into another folder")
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    graphs = sorted(path.name for path in out.glob("*.onnx"))
    assert graphs == [f"{SHAPES}_full.onnx"] + [f"{SHAPES}_keep0.{k}0.onnx" for k in range(3, 8)]
    for graph in graphs:
        Artifact.read(out / graph)
    assert sorted(path.name for path in out.iterdir() if path.name.startswith(".")) == []


@pytest.mark.parametrize("suffix, role", [(".onnx", "the graph"), (".json", "the sidecar"),
                                          (".onnx.data", "the weights file")])
def test_export_json_never_replaces_an_output_of_the_same_export(run_cli, tmp_path, suffix, role):
    out = tmp_path / "onnx"
    name = f"{SHAPES}_keep0.60"
    for extra in ((), ("--force",)):
        target = out / f"{name}{suffix}"
        assert_one_line_error(run_cli("export", "--model", SHAPES, "--out", out, "--json", target, *extra),
                              f"--json {target} is also {role} {target} of this command")
        assert not out.exists()
    assert run_cli("export", "--model", SHAPES, "--out", out, "--no-check").exit_code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    target = out / f"{name}{suffix}"
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--out", out, "--json", target, "--force"),
                          f"is also {role}")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_killed_int8_export_leaves_its_temporary_graphs_where_the_next_export_removes_them(tmp_path):
    calibration = write_shapes_folder(tmp_path / "calibration", 200, HELD_OUT_SEED, size=64)
    temporary, out = tmp_path / "tmp", tmp_path / "onnx"
    temporary.mkdir()
    args = ("export", "--model", SHAPES, "--out", out, "--quantize", "int8-static", "--calib-data", calibration,
            "--calib-images", "200", "--calib-method", "entropy", "--no-check")
    process = prtk_process(*args, env=os.environ | {"TMPDIR": str(temporary)})
    wait_for(lambda: any(out.glob(".*.staging/prtk-quantize-*")), process, "the export quantizes")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert folders(temporary) == []  # the float graph and the quantizer's files were in the staging folder
    assert any(out.glob(".*.staging"))
    finished = subprocess.run([sys.executable, "-m", "prtk.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=600, env=os.environ | {"TMPDIR": str(temporary)})
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert sorted(path.name for path in out.iterdir()) == [f"{SHAPES}_keep0.60_int8-static.json",
                                                           f"{SHAPES}_keep0.60_int8-static.onnx"]
    assert folders(temporary) == []


def folders(path: Path) -> list[str]:
    """The temporary folders in ``path`` (tempfile makes one per graph; other libraries leave session files)."""
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir())


def test_a_ranking_resumed_with_another_thread_count_is_refused(run_cli, tmp_path):
    from prtk.models import load_clip
    from prtk.ranking.distributed import intra_op_threads
    from prtk.ranking.folder_ranking import rank_folder
    from prtk.ranking.search import RankingConfig

    data = write_shapes_folder(tmp_path / "data", 24, HELD_OUT_SEED, size=64)
    out = tmp_path / "ranking.prtk"

    def kill_after_first_chunk(completed, total):
        if completed >= 8:
            raise SimulatedKill

    with intra_op_threads(2), pytest.raises(SimulatedKill):
        rank_folder(load_clip(SHAPES), data, out, RankingConfig(layer=3, step=16, score="similarity"), chunk=8,
                    progress=kill_after_first_chunk)
    args = ("rank", "--model", SHAPES, "--data", data, "--out", out, "--layer", "3", "--step", "16", "--chunk", "8",
            "--score", "similarity")
    assert_one_line_error(run_cli(*args, "--threads", "1"), "holds a run with other threads",
                          "it ran with 2 intra-op threads, this run has 1")
    assert not out.exists()
    assert run_cli(*args, "--threads", "2").exit_code == 0
    assert out.exists() and not Path(f"{out.parent}/.{out.name}.partial").exists()


def test_an_engine_and_its_sidecar_are_moved_into_place_together(tmp_path, monkeypatch):
    """Killed between the two moves, the engine pair is completed by the next reader, as an export's pair is."""
    from conftest import SimulatedKill as Kill
    from prtk.core import files
    from prtk.engines.tensorrt_build import write_engine

    engine = tmp_path / "model_keep0.60_fp16.engine"
    write_engine(engine, b"old engine", {"format": "old"})
    real_replace, moved = os.replace, []

    def kill_after_first_move(source, target):
        if Path(target).parent == tmp_path and Path(source).parent.name.endswith(".staging"):  # the pair's moves
            if moved:
                raise Kill
            moved.append(target)
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(files.os, "replace", kill_after_first_move)
        with pytest.raises(Kill):
            write_engine(engine, b"new engine", {"format": "new"})
    assert engine.read_bytes() == b"new engine" and '"old"' in engine.with_suffix(".json").read_text()
    files.finish_commits(tmp_path)
    assert '"new"' in engine.with_suffix(".json").read_text()
    write_engine(engine, b"newer engine", {"format": "newer"})  # a later build clears the killed one's staging
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([engine.name, engine.with_suffix(".json").name])
