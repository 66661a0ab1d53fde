"""prtk's C++ side, built here by `prtk cpp build` as CI builds it (a missing compiler, CMake, libjpeg or libpng fails
these tests; nothing here skips): prtk-embed preprocesses real JPEG and PNG files bit for bit as prtk's Python side
does, its outputs pass `prtk validate --backend cpp-openvino`, the C API works from C, bad input is one line, and a
build with AddressSanitizer and UBSan runs good and bad images with no sanitizer report."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import assert_one_line_error, lying_copy, run_prtk_process
from prtk.data.folder import rgb_image
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.models import load_clip
from prtk.models.preprocessing import CROPS, Preprocessing

SHAPES = "prtk-testbed-shapes"
SANITIZER_REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")
SANITIZED = {"TBB_ENABLE_SANITIZERS": "1"}  # OpenVINO's TBB then loads its parts without RTLD_DEEPBIND


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """`prtk cpp build` into a fresh folder: its --json document."""
    root = tmp_path_factory.mktemp("cpp")
    result = run_prtk_process("cpp", "build", "--out", root / "build", "--json", root / "build.json")
    assert result.exit_code == 0, result.output
    return json.loads((root / "build.json").read_text())


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """The shapes test bed's keep-0.6 graph (64 x 64 input, embedding and kept_indices outputs)."""
    (record,) = export_models(load_clip(SHAPES), ExportConfig(keeps=(0.6,), run_checks=False),
                              tmp_path_factory.mktemp("cpp-graph"), None)
    return record.path


def run(program: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([program, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=None if env is None else os.environ | env)


def write_png(path: Path, samples: np.ndarray, color_type: int, depth: int) -> None:
    """A PNG PIL cannot write (16-bit RGB, 4-bit gray): ``samples`` [H, W, C] at ``depth`` bits, filter 0."""
    height, width = samples.shape[:2]
    if depth == 16:
        rows = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    else:  # pack the sub-byte samples of each row, most significant first
        per_byte = 8 // depth
        padded = np.zeros((height, -(-width // per_byte) * per_byte), np.uint8)
        padded[:, :width] = samples.reshape(height, width)
        grouped = padded.reshape(height, -1, per_byte).astype(np.uint16)
        rows = sum(grouped[..., i] << (8 - depth * (i + 1)) for i in range(per_byte)).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def image_zoo(folder: Path) -> list[Path]:
    """JPEG (4:2:0, 4:4:4, 4:2:2, progressive, grayscale) and PNG (RGB, RGBA, L, LA, P, P with tRNS, 1-bit, 4-bit,
    16-bit gray and RGB) files, each in sizes that make every resize and crop step act (up and down, portrait and
    landscape, 1 x 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for w, h in [(100, 37), (37, 100), (70, 300), (1, 1), (301, 200), (64, 64), (3, 90)]:
        rows, columns = np.mgrid[0:h, 0:w]
        pixels = (np.stack([rows * 255 // h, columns * 255 // w, (rows + columns) % 200], -1)
                  + rng.integers(0, 60, (h, w, 3))).clip(0, 255).astype(np.uint8)
        image, name = Image.fromarray(pixels, "RGB"), f"{w}x{h}"
        image.save(folder / f"{name}_420.jpg", quality=90)
        image.save(folder / f"{name}_444.jpg", quality=75, subsampling=0)
        image.save(folder / f"{name}_422.jpg", quality=75, subsampling=1)
        image.save(folder / f"{name}_progressive.jpg", quality=80, progressive=True)
        image.convert("L").save(folder / f"{name}_gray.jpg")
        image.save(folder / f"{name}_rgb.png")
        Image.fromarray(np.dstack([pixels, rng.integers(0, 256, (h, w), dtype=np.uint8)]), "RGBA").save(
            folder / f"{name}_rgba.png")
        image.convert("L").save(folder / f"{name}_gray.png")
        image.convert("LA").save(folder / f"{name}_la.png")
        palette = image.convert("P", palette=Image.ADAPTIVE, colors=32)
        palette.save(folder / f"{name}_palette.png")
        palette.save(folder / f"{name}_palette_trns.png", transparency=3)
        image.convert("1").save(folder / f"{name}_1bit.png")
        write_png(folder / f"{name}_4bit.png", rng.integers(0, 16, (h, w, 1)), 0, 4)
        write_png(folder / f"{name}_gray16.png", rng.integers(0, 65536, (h, w, 1)), 0, 16)
        write_png(folder / f"{name}_rgb16.png", rng.integers(0, 65536, (h, w, 3)), 2, 16)
    return sorted(folder.iterdir())


def test_the_build_names_its_compiler_runtime_and_backends(built):
    assert re.match(r"(g\+\+|clang) \d", built["compiler"]) and built["runtime"].startswith("OpenVINO 20")
    assert built["backends"][0] == "openvino" and not built["sanitize"]
    log = (Path(built["build_dir"]) / "configure.log").read_text()
    tensorrt = "tensorrt" in built["backends"]
    assert ("TensorRT backend: built" if tensorrt else "TensorRT backend: skipped") in log
    usage = run(built["program"], "--help")
    assert usage.returncode == 0 and "--outputs DIR" in usage.stdout and "--device D" in usage.stdout


@pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")  # PIL, on the tRNS palette PNG
@pytest.mark.parametrize("mode, interpolation", [("shortest", "bicubic"), ("squash", "bilinear")])
def test_prtk_embed_preprocesses_every_image_kind_bit_for_bit_as_python(built, graph, tmp_path, mode, interpolation):
    """The tensors the graph gets from C++ (libjpeg-turbo, libpng, PIL's resampling re-implemented) are prtk's
    Python tensors (PIL, open_clip's transform), bit for bit, for the description's resize mode and filter."""
    def describe(description):
        description["input"]["resize"].update(mode=mode, interpolation=interpolation, crop=CROPS[mode])

    artifact = graph if mode == "shortest" else lying_copy(graph, tmp_path / "squash", describe)
    images = image_zoo(tmp_path / "zoo")
    done = run(built["program"], artifact, tmp_path / "zoo", "--save-inputs", tmp_path / "inputs.npy",
               "--outputs", tmp_path / "out", "--batch", 7)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "images.txt").read_text().splitlines() == [str(path) for path in images]
    described = json.loads(artifact.with_suffix(".json").read_text())["input"]
    transform = Preprocessing.from_description(described).transform()
    given = np.load(tmp_path / "inputs.npy")
    assert given.shape == (len(images), 3, 64, 64) and given.dtype == np.float32
    for path, tensor in zip(images, given, strict=True):
        with Image.open(path) as image:
            expected = transform(rgb_image(image)).numpy()
        assert np.array_equal(tensor, expected), (path.name, float(np.abs(tensor - expected).max()))
    assert np.load(tmp_path / "out" / "embedding.npy").shape == (len(images), 128)
    assert np.load(tmp_path / "out" / "kept_indices.npy").dtype == np.int64


def test_validate_proves_the_cpp_program_against_the_pytorch_reference(built, graph, shapes_dir):
    result = run_prtk_process("validate", graph, "--data", shapes_dir, "--backend", "cpp-openvino",
                              "--cpp-program", built["program"])
    assert result.exit_code == 0, result.output
    report = json.loads(graph.with_name(graph.name + ".validation.json").read_text())
    assert report["backend"] == "cpp-openvino" and report["passed"]
    assert report["program"] == {"path": built["program"], "compiler": built["compiler"],
                                 "runtime": built["runtime"], "backends": built["backends"]}
    assert report["agreement"] == 100.0 and report["data"]["images"] == 40
    assert report["max_abs_diff"] <= 1e-4 and report["kept_overlap"]["identical"] == 100.0
    assert f"C++ program `{built['program']}`" in result.stdout


def test_validate_proves_the_cpp_program_on_a_staged_int8_graph(built, shapes_dir, tmp_path):
    config = ExportConfig(keeps=(0.7,), later_stages=((3, 0.7), (5, 0.7)), quantize="int8-static",
                          calib_data=str(shapes_dir), calib_images=32, run_checks=False)
    (record,) = export_models(load_clip(SHAPES), config, tmp_path, None)
    result = run_prtk_process("validate", record.path, "--data", shapes_dir, "--backend", "cpp-openvino",
                              "--cpp-program", built["program"])
    report = json.loads(record.path.with_name(record.path.name + ".validation.json").read_text())
    assert report["precision"] == "int8" and report["backend"] == "cpp-openvino", result.output
    assert result.exit_code == 0 and report["passed"], report["criteria"]
    assert report["kept_overlap"]["identical"] == 100.0


def test_the_c_api_embeds_from_c_as_the_program_does(built, graph, shapes_dir, tmp_path):
    image = sorted(shapes_dir.rglob("*.png"))[0]
    done = run(built["c_api_test"], graph, image)
    assert done.returncode == 0, done.stderr
    from_c = np.array(done.stdout.split(), dtype=np.float32)
    program = run(built["program"], graph, image, "--batch", 1, "--out", tmp_path / "one.npy")
    assert program.returncode == 0, program.stderr
    assert np.array_equal(from_c, np.load(tmp_path / "one.npy")[0])
    assert abs(float(np.linalg.norm(from_c)) - 1.0) < 1e-5  # the graph's L2-normalised embedding


def strip_description(path: Path, folder: Path) -> Path:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    folder.mkdir()
    onnx.save(model, str(folder / path.name))
    return folder / path.name


@pytest.mark.parametrize("case, message", [
    ("no description", "carries no embedded prtk description"),
    ("edited sidecar", "contradicts the description embedded in"),
    ("not for openvino", "runs on onnxruntime only (its description's runtimes), not on openvino"),
    ("graph contradicts", "its description [batch, 3, 32, 32]"),
    ("unsupported resize", "has the resize mode 'longest', which this program does not implement"),
    ("unknown device", "OpenVINO has no device NOSUCH here (it sees CPU"),
    ("empty folder", "no JPEG or PNG images in folder"),
    ("missing image", "image not found"),
    ("not an image", "not a JPEG or PNG file"),
    ("output over an input", "is one of the inputs"),
    ("existing output", "exists: pass --force"),
    ("bad batch", "--batch must be an integer in [1, 4096], got '0'"),
])
def test_prtk_embed_refuses_bad_input_in_one_line(built, graph, shapes_dir, tmp_path, case, message):
    image = sorted(shapes_dir.rglob("*.png"))[0]
    artifact, arguments = graph, [image]
    if case == "no description":
        artifact = strip_description(graph, tmp_path / "bare")
    elif case == "edited sidecar":
        artifact = lying_copy(graph, tmp_path / "edited", lambda d: d.update(model="another"), embedded=False)
    elif case == "not for openvino":
        artifact = lying_copy(graph, tmp_path / "ort", lambda d: d.update(runtimes=["onnxruntime"]))
    elif case == "graph contradicts":
        def smaller(description):
            description["input"].update(shape=["batch", 3, 32, 32])
            description["input"]["resize"].update(size=32)

        artifact = lying_copy(graph, tmp_path / "small", smaller)
    elif case == "unsupported resize":
        artifact = lying_copy(graph, tmp_path / "longest",
                              lambda d: d["input"]["resize"].update(mode="longest", crop="center, padded"))
    elif case == "unknown device":
        arguments = [image, "--device", "NOSUCH"]
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        arguments = [tmp_path / "empty"]
    elif case == "missing image":
        arguments = [tmp_path / "missing.jpg"]
    elif case == "not an image":
        (tmp_path / "notes.png").write_text("not a picture")
        arguments = [tmp_path / "notes.png"]
    elif case == "output over an input":
        arguments = [image, "--out", image]
    elif case == "existing output":
        (tmp_path / "taken.npy").write_bytes(b"keep me")
        arguments = [image, "--out", tmp_path / "taken.npy"]
    elif case == "bad batch":
        arguments = [image, "--batch", 0]
    done = run(built["program"], artifact, *arguments)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("prtk-embed: error: ") and message in lines[0], lines[0]
    assert image.is_file() and image.stat().st_size > 100
    assert not (tmp_path / "taken.npy").exists() or (tmp_path / "taken.npy").read_bytes() == b"keep me"


def test_a_sanitized_build_runs_good_and_bad_images_without_a_report(built, graph, shapes_dir, tmp_path):
    result = run_prtk_process("cpp", "build", "--sanitize", "--out", tmp_path / "asan", "--json", "-")
    assert result.exit_code == 0, result.output
    program = json.loads(result.stdout)["program"]
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), "RGB").save(good / "one_pixel.png")
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L").save(good / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (70, 50, 4), dtype=np.uint8), "RGBA").save(good / "rgba.png")
    jpeg = (good / "gray.jpg").read_bytes()
    png = (good / "rgba.png").read_bytes()
    bad = {"corrupt.jpg": jpeg[:2] + b"\xff\x00" * 64 + jpeg[200:], "truncated.jpg": jpeg[: len(jpeg) // 2],
           "truncated.png": png[: len(png) * 6 // 10], "empty.png": b""}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        done = run(program, graph, tmp_path / name, env=SANITIZED)
        assert not SANITIZER_REPORT.search(done.stderr), done.stderr
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (name, done.stderr)
        assert f"cannot decode image {tmp_path / name}: " in lines[0], lines[0]
    many = tmp_path / "thousand"
    many.mkdir()
    for index in range(1000):
        Image.fromarray(rng.integers(0, 256, (8 + index % 5, 9, 3), dtype=np.uint8), "RGB").save(
            many / f"{index:04d}.png")
    for inputs in ([good], [many]):
        done = run(program, graph, *inputs, "--outputs", tmp_path / "out", "--force", "--batch", 64, env=SANITIZED)
        assert done.returncode == 0 and not SANITIZER_REPORT.search(done.stderr), done.stderr
        plain = run(built["program"], graph, *inputs, "--outputs", tmp_path / "plain", "--force", "--batch", 64)
        assert plain.returncode == 0, plain.stderr
        for name in ("embedding", "kept_indices"):
            sanitized, plain_output = (np.load(tmp_path / folder / f"{name}.npy") for folder in ("out", "plain"))
            assert np.array_equal(sanitized, plain_output)
    assert np.load(tmp_path / "out" / "embedding.npy").shape == (1000, 128)


def test_cpp_build_names_what_is_missing(built, tmp_path):
    no_cmake = run_prtk_process("cpp", "build", "--out", tmp_path / "a", env={"PATH": str(tmp_path)})
    assert_one_line_error(no_cmake, "CMake is not installed here")
    no_compiler = run_prtk_process("cpp", "build", "--out", tmp_path / "b", env={"CXX": "/no/such/g++"})
    assert_one_line_error(no_compiler, "no working C++ compiler: install g++")
    nothing_installed = [f"--define={entry}" for entry in ("CMAKE_FIND_ROOT_PATH=/no/such/root",
                                                          "CMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
                                                          "CMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY")]
    no_libjpeg = run_prtk_process("cpp", "build", "--out", tmp_path / "d", *nothing_installed)
    assert_one_line_error(no_libjpeg, "libjpeg's headers were not found", "libjpeg62-turbo-dev")
    if "tensorrt" not in built["backends"]:  # no TensorRT here: --tensorrt is refused, not silently skipped
        no_tensorrt = run_prtk_process("cpp", "build", "--out", tmp_path / "e", "--tensorrt")
        assert_one_line_error(no_tensorrt, "TensorRT backend requested but TensorRT", "TENSORRT_ROOT")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert_one_line_error(run_prtk_process("cpp", "build", "--out", tmp_path / "c"), "not a prtk C++ build")
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


def test_validate_refuses_a_cpp_program_it_cannot_use(graph, shapes_dir, tmp_path):
    (tmp_path / "fake").write_text("#!/bin/sh\necho hello\n")
    (tmp_path / "fake").chmod(0o755)
    result = run_prtk_process("validate", graph, "--data", shapes_dir, "--backend", "cpp-openvino",
                              "--cpp-program", tmp_path / "fake")
    assert_one_line_error(result, "is not a prtk-embed program")
    result = run_prtk_process("validate", graph, "--data", shapes_dir, "--cpp-program", tmp_path / "fake")
    assert_one_line_error(result, "--cpp-program", "--backend cpp-openvino")
