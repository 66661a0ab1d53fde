"""Running the compiled ``prtk-embed`` program from Python: images (files) in, the graph's outputs back as arrays,
and its own timing of inference (``--bench``). This is how ``validate --backend cpp-openvino`` and the C++ bench
see what a C++ application gets: the program decodes and preprocesses the images itself.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prtk.core.errors import PrtkInputError

from .cpp_build import PROGRAM, default_build_dir, program_build


@dataclass(frozen=True)
class CppProgram:
    """A built ``prtk-embed``: its path and what built it (compiler, OpenVINO version, backends)."""

    path: str
    compiler: str
    runtime: str
    backends: tuple[str, ...]

    @classmethod
    def find(cls, path: str | Path | None = None) -> CppProgram:
        """The program at ``path``, or the one ``prtk cpp build`` built in its default folder."""
        program = Path(path) if path is not None else default_build_dir() / PROGRAM
        if not program.is_file():
            hint = "pass --cpp-program PATH" if path is not None else "build it with `prtk cpp build`"
            raise PrtkInputError(f"no prtk-embed program at {program}: {hint}")
        compiler, runtime, backends = program_build(program)
        return cls(str(program), compiler, runtime, tuple(backends))

    @property
    def description(self) -> str:
        """One line for reports: the program and its build."""
        return f"{self.path} ({self.compiler}; {self.runtime})"

    def embed(self, artifact: str | Path, images: list[Path], batch: int = 32, device: str = "CPU",
              threads: int = 0) -> dict[str, np.ndarray]:
        """Every output of ``artifact`` for ``images`` (files, decoded and preprocessed by the program), by name,
        ``[len(images), ...]`` in their order. The program's refusals (a corrupt image, a description it does not
        accept) are ``PrtkInputError`` with its one line."""
        with tempfile.TemporaryDirectory(prefix="prtk-embed.") as scratch:
            listing = Path(scratch) / "images.list"
            listing.write_text("".join(f"{image}\n" for image in images))
            outputs = Path(scratch) / "outputs"
            self._run(artifact, "--files-from", str(listing), "--outputs", str(outputs), "--batch", str(batch),
                      "--device", device, "--threads", str(threads), "--json")
            return {path.stem: np.load(path) for path in sorted(outputs.glob("*.npy"))}

    def bench(self, artifact: str | Path, images: list[Path], batch: int, rounds: int, threads: int = 0) -> list[float]:
        """The program's own timing (ms) of ``rounds`` inferences of one preprocessed batch of ``batch`` images (made
        from ``images``, repeated as needed), after warm-up."""
        done = self._run(artifact, *map(str, images), "--batch", str(batch), "--bench", str(rounds),
                         "--threads", str(threads))
        return [float(value) for value in json.loads(done)["times_ms"]]

    def _run(self, artifact: str | Path, *arguments: str) -> str:
        done = subprocess.run([self.path, str(artifact), *arguments], capture_output=True, text=True)
        if done.returncode != 0:
            line = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise PrtkInputError(line.removeprefix("prtk-embed: error: ").removeprefix("prtk-embed: "))
        return done.stdout
