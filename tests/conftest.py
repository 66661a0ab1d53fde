"""Shared fixtures: real data folders (CIFAR-10 from ../shared/data, generated shapes) and a CLI runner."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prtk.cli import cli

SHARED_DATA = Path(os.environ.get("PRTK_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
CIFAR_TEST_TAR = SHARED_DATA / "cifar10" / "cifar10-test.tar"


def require_data(path: Path) -> None:
    """Skip when ``path`` is absent, unless PRTK_REQUIRE_DATA=1 (CI), where that is a failure."""
    if path.exists():
        return
    message = f"{path} not found (../shared/data beside the repository, or set PRTK_DATA_DIR)"
    if os.environ.get("PRTK_REQUIRE_DATA") == "1":
        pytest.fail(message + " and PRTK_REQUIRE_DATA=1")
    pytest.skip(message)


class SimulatedKill(BaseException):
    """Raised from a progress callback or a patched OS call to stop a run as a kill would, mid-way."""


def assert_one_line_error(result, *fragments):
    """Exit status 2 and one line on stderr, ``prtk <command>: error: ...``, holding every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert re.match(r"prtk( [a-z-]+)*: error: ", lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def cifar_test_dir(tmp_path_factory) -> Path:
    """The CIFAR-10 test split unpacked as an ImageFolder (10 classes x 1,000 JPEGs)."""
    require_data(CIFAR_TEST_TAR)
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR_TEST_TAR) as archive:
        archive.extractall(root, filter="data")
    return root / "test"


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    from prtk.data.synthetic import write_shapes_folder

    return write_shapes_folder(tmp_path_factory.mktemp("data") / "shapes", count=40, seed=1, size=32)


def run_prtk_process(*args, timeout: float = 900, env: dict[str, str] | None = None):
    """Run ``python -m prtk.cli ARGS`` in a process of its own (``env``: variables set for it); returns exit_code,
    stdout, stderr and output like ``run_cli``. For OpenVINO: its TBB thread pool makes a later fork() in the same
    process (a DataLoader worker in another test) crash, so the test process never loads it."""
    import os
    import subprocess
    import sys
    from types import SimpleNamespace

    done = subprocess.run([sys.executable, "-m", "prtk.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else os.environ | env)
    return SimpleNamespace(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr,
                           output=done.stdout + done.stderr)


@pytest.fixture
def run_cli():
    """Run ``prtk ARGS`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run


def perturbed_copy(path: Path, out: Path, scale: float) -> Path:
    """Copy an export with seeded noise of ``scale`` x its spread added to its largest weight; the sidecar and the
    embedded description still claim the original weights."""
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    values = numpy_helper.to_array(largest)
    noise = np.random.default_rng(0).standard_normal(values.shape).astype(values.dtype)
    largest.CopyFrom(numpy_helper.from_array(values + scale * values.std() * noise, largest.name))
    onnx.save(model, str(out))
    shutil.copy(path.with_suffix(".json"), out.with_suffix(".json"))
    return out


def seeded_pack(clip, path, keeps=(0.5, 0.6, 0.7), layer=3, tokens=4, seed=0):
    """A real pack file holding a seeded, untrained predictor and seeded tokens (export and validation do not
    care how well they were trained)."""
    from prtk.predictor.pack import RankerPack, save_pack
    from prtk.predictor.model import PredictorConfig, TokenRankPredictor

    torch.manual_seed(seed)
    config = PredictorConfig.for_spec(clip.spec)
    predictor = TokenRankPredictor(clip.spec, config)
    generator = torch.Generator().manual_seed(seed)
    save_pack(path, RankerPack(
        predictor=predictor.state_dict(),
        tokens={keep: 0.02 * torch.randn(tokens, clip.spec.width, generator=generator) for keep in keeps},
        meta={"model": clip.name, "weights_sha256": clip.weights_sha256, "layer": layer, "keep_ratios": list(keeps),
              "num_tokens": tokens, "predictor": config.as_dict()}))
    return path


def lying_copy(path: Path, folder: Path, change, embedded: bool = True) -> Path:
    """A copy of the export whose sidecar (and, with ``embedded``, the graph's own description) ``change`` edited."""
    import json
    import shutil

    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    copy = Path(shutil.copy(path, folder / path.name))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    change(sidecar)
    copy.with_suffix(".json").write_text(json.dumps(sidecar))
    if embedded:
        model = onnx.load(str(copy))
        description = json.loads(model.metadata_props[0].value)
        change(description)
        model.metadata_props[0].value = json.dumps(description, sort_keys=True)
        onnx.save(model, str(copy))
    return copy
