"""``prtk cpp``: build prtk's C++ side (libprtk_embed, its C API and the prtk-embed program) and say where it is."""

from __future__ import annotations

import json

import click

from prtk.cli.base import PrtkCommand, PrtkGroup, check_json_destination, emit_json, force_option, json_option


@click.group("cpp", cls=PrtkGroup)
def cpp_group():
    """prtk's C++ side: an Embedder library (C++ and C API) and the prtk-embed program over OpenVINO
    (TensorRT where found), which reads everything from an artifact's description."""


@cpp_group.command("build", cls=PrtkCommand)
@click.option("--out", "build_dir", metavar="DIR", default=None,
              help="Build folder (rebuilt in place if it is one already)  [default: ~/.cache/prtk/cpp, where "
                   "`prtk validate --backend cpp-openvino` looks]")
@click.option("--tensorrt", is_flag=True,
              help="Require the TensorRT backend (fail if CMake finds no TensorRT and CUDA); without it, the "
                   "backend is built only where found.")
@click.option("--sanitize", is_flag=True,
              help="A Debug build (-O0 -g) with AddressSanitizer and UndefinedBehaviorSanitizer.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel compile jobs  [default: CPU count]")
@click.option("--define", "defines", metavar="KEY=VALUE", multiple=True,
              help="A CMake cache entry, as cmake -D takes it (repeatable), e.g. TENSORRT_ROOT=/opt/tensorrt or "
                   "CMAKE_CXX_COMPILER=clang++.")
@json_option("the build (paths, compiler, OpenVINO version, backends)")
@force_option()
def build_command(build_dir, tensorrt, sanitize, jobs, defines, json_path, force):
    """Configure and build engines/cpp with CMake against this environment's OpenVINO; print where prtk-embed is.

    Needs a C++17 compiler, CMake >= 3.17, and libjpeg-turbo and libpng with their headers (Debian:
    g++ cmake libjpeg62-turbo-dev libpng-dev); a missing one is one line that names it.
    """
    from prtk.core.console import progress_bar
    from prtk.core.files import check_distinct_outputs
    from prtk.engines.cpp_build import build, default_build_dir

    check_distinct_outputs([("--out", build_dir or default_build_dir()),
                            ("--json", None if json_path in (None, "-") else json_path)])
    check_json_destination(json_path, force, {})
    with progress_bar("cpp build", unit="step") as update:
        built = build(build_dir, tensorrt=tensorrt, sanitize=sanitize, jobs=jobs, defines=defines, progress=update)
    click.echo(f"built {built.program}\n  library {built.library} (C API: prtk/prtk.h)\n"
               f"  {built.compiler}; {built.runtime}; backends: {', '.join(built.backends)}",
               err=json_path == "-")
    emit_json(built, json_path, force)


@cpp_group.command("paths", cls=PrtkCommand)
@click.option("--source", "only", flag_value="source", help="Print only the C++ source folder.")
@click.option("--openvino-dir", "only", flag_value="openvino_dir",
              help="Print only the folder of OpenVINO's CMake package (OpenVINOConfig.cmake).")
@click.option("--json", "as_json", is_flag=True, help="Print every path as a JSON object.")
def paths_command(only, as_json):
    """The C++ sources, OpenVINO's CMake package and the default build folder, for a build of your own:

    \b
    cmake -S "$(prtk cpp paths --source)" -B build -DOpenVINO_DIR="$(prtk cpp paths --openvino-dir)"
    cmake --build build -j
    """
    from prtk.engines.cpp_build import SOURCE_DIR, default_build_dir, openvino_cmake_dir

    paths = {"source": str(SOURCE_DIR), "openvino_dir": str(openvino_cmake_dir()),
             "default_build": str(default_build_dir())}
    if only:
        click.echo(paths[only])
    elif as_json:
        click.echo(json.dumps(paths, indent=2))
    else:
        click.echo("\n".join(f"{key}: {value}" for key, value in paths.items()))
