"""Building prtk's C++ side (``engines/cpp``: libprtk_embed, its C API, the ``prtk-embed`` program) with CMake against
the OpenVINO of this Python environment (its wheel ships OpenVINO's headers and CMake package), the way
``python -m pybind11 --cmakedir`` serves C++ builds. A missing compiler, CMake, libjpeg or libpng is one line that
names the package to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from prtk.core.errors import PrtkInputError
from prtk.core.files import folder_writer_lock

SOURCE_DIR = Path(__file__).parent / "cpp"
PROGRAM = "prtk-embed"
LIBRARY = "libprtk_embed.so"
C_API_TEST = "prtk_c_api_test"
MISSING = (  # CMake's words -> what to install
    ("Could NOT find JPEG", "libjpeg's headers were not found: install libjpeg-turbo's development package "
                            "(Debian: libjpeg62-turbo-dev; Ubuntu: libjpeg-turbo8-dev; Fedora: libjpeg-turbo-devel)"),
    ("Could NOT find PNG", "libpng's headers were not found: install libpng's development package "
                           "(Debian/Ubuntu: libpng-dev; Fedora: libpng-devel)"),
    ("CMAKE_CXX_COMPILER", "no working C++ compiler: install g++ (Debian/Ubuntu: g++; Fedora: gcc-c++) or set CXX"),
    ("CMAKE_C_COMPILER", "no working C compiler: install gcc or set CC"),
    ('provided by "OpenVINO"', "CMake did not accept this environment's OpenVINO CMake package (reinstall the "
                               "openvino wheel)"),
)


@dataclass(frozen=True)
class CppBuild:
    """A configured and built ``engines/cpp``: where its program, library and C API test are, and what built them
    (``compiler``, ``runtime``: the OpenVINO version, ``backends``)."""

    build_dir: str
    program: str
    library: str
    c_api_test: str
    compiler: str
    runtime: str
    backends: list[str]
    sanitize: bool

    def as_dict(self) -> dict:
        return asdict(self)


def default_build_dir() -> Path:
    """``$XDG_CACHE_HOME/prtk/cpp`` (``~/.cache/prtk/cpp``): where ``prtk cpp build`` builds, and where ``prtk
    validate --backend cpp-openvino`` looks for the program, unless told otherwise."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "prtk" / "cpp"


def openvino_cmake_dir() -> Path:
    """The folder of OpenVINO's CMake package (``OpenVINOConfig.cmake``) in this environment's wheel."""
    import openvino  # a dependency of prtk, imported when used (it starts a thread pool)

    folder = Path(openvino.__file__).parent / "cmake"
    if not (folder / "OpenVINOConfig.cmake").is_file():
        raise PrtkInputError(f"this OpenVINO ({openvino.__version__}) ships no CMake package at {folder}: install "
                             "the openvino wheel from PyPI (2024.0 or newer)")
    return folder


def cmake_arguments(build_dir: Path, tensorrt: bool, sanitize: bool, defines: tuple[str, ...] = ()) -> list[str]:
    """The ``cmake`` configure command for ``build_dir``, with the cache entries ``defines`` (``KEY=VALUE``) last."""
    for define in defines:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(:[A-Z]+)?=.*", define):
            raise PrtkInputError(f"--define must be KEY=VALUE (a CMake cache entry as cmake -D takes it), got "
                                 f"{define!r}")
    return ["cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), f"-DOpenVINO_DIR={openvino_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=" + ("Debug" if sanitize else "Release"),
            f"-DPRTK_TENSORRT={'ON' if tensorrt else 'AUTO'}", f"-DPRTK_SANITIZE={'ON' if sanitize else 'OFF'}",
            *(f"-D{define}" for define in defines)]


def build(build_dir: str | Path | None = None, tensorrt: bool = False, sanitize: bool = False,
          jobs: int | None = None, defines: tuple[str, ...] = (),
          progress: Callable[[int, int], None] | None = None) -> CppBuild:
    """Configure and build ``engines/cpp`` into ``build_dir`` (default ``default_build_dir()``; rebuilt in place when
    it is one already). ``tensorrt``: the TensorRT backend is required (else built only where found); ``sanitize``:
    a Debug build (-O0 -g) with AddressSanitizer and UndefinedBehaviorSanitizer; ``defines``: more CMake cache entries
    (``KEY=VALUE``); ``progress(done, 2)`` after configuring and building. Bad setups are ``PrtkInputError`` naming
    what to install."""
    folder = Path(build_dir) if build_dir is not None else default_build_dir()
    configure = cmake_arguments(folder, tensorrt, sanitize, defines)
    if shutil.which("cmake") is None:
        raise PrtkInputError("CMake is not installed here: install cmake 3.17 or newer (Debian/Ubuntu: cmake)")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                     and not (folder / "CMakeCache.txt").is_file())):
        raise PrtkInputError(f"--out {folder} holds files that are not a prtk C++ build: choose a new or empty folder")
    compile_command = ["cmake", "--build", str(folder), "-j", str(jobs or os.cpu_count() or 2)]
    with folder_writer_lock(folder, "build"):
        for done, (command, step) in enumerate(((configure, "configure"), (compile_command, "build")), start=1):
            _run(command, folder / f"{step}.log", step)
            if progress is not None:
                progress(done, 2)
    program = folder / PROGRAM
    compiler, runtime, backends = program_build(program)
    return CppBuild(build_dir=str(folder), program=str(program), library=str(folder / LIBRARY),
                    c_api_test=str(folder / C_API_TEST), compiler=compiler, runtime=runtime, backends=backends,
                    sanitize=sanitize)


def program_build(program: str | Path) -> tuple[str, str, list[str]]:
    """What ``prtk-embed --version`` says it was built with: (compiler, OpenVINO version, backends)."""
    try:
        done = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as error:
        raise PrtkInputError(f"cannot run the C++ program {program}: {error.strerror or error}") from None
    match = re.fullmatch(r"prtk-embed: (.+?); (OpenVINO \S+); backends: (.+)", done.stdout.strip())
    if done.returncode != 0 or match is None:
        raise PrtkInputError(f"{program} is not a prtk-embed program (its --version says "
                             f"{(done.stdout or done.stderr).strip()[:120]!r})")
    return match[1], match[2], match[3].split(", ")


def _run(command: list[str], log: Path, step: str) -> None:
    """Run a CMake step, its output to ``log``; a failure is one line that says what is missing."""
    done = subprocess.run(command, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode == 0:
        return
    text = done.stdout + done.stderr
    fatal = re.search(r"prtk: (TensorRT backend requested.*?)(?:\n\n|\Z)", text, re.S)
    if fatal:
        raise PrtkInputError(" ".join(fatal[1].split()))
    for words, message in MISSING:
        if step == "configure" and words in text:
            raise PrtkInputError(f"{message} (CMake's log: {log})")
    first = next((line.strip() for line in text.splitlines() if "error" in line.lower()), text.strip()[-200:])
    raise PrtkInputError(f"cmake could not {step} {SOURCE_DIR}: {first} (log: {log})")
