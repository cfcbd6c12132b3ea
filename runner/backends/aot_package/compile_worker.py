"""Compile worker: takes an ExportedProgram saved by build.compile_package, the package's path
and its metadata; writes the AOTInductor package. Runs as a process of its own:

    python -m runner.backends.aot_package.compile_worker PROGRAM.pt2 PACKAGE.pt2 METADATA.json

Why a process of its own: what compiling sets up (Inductor's pool of compile workers, the
compiler shim of link.py) stays out of the processes that load and time packages (build.load).
On torch 2.11 (the GPU machine's) packages linked a static libstdc++ of their own and crashed
at load; the compiler set here drops that request (link.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(
            "usage: python -m runner.backends.aot_package.compile_worker PROGRAM.pt2 "
            "PACKAGE.pt2 METADATA.json\n"
        )
        return 2
    program_path, package_path, meta_path = (Path(a) for a in argv)
    from runner.backends.aot_package import link

    link.use_shared_runtime()  # before any compile: Inductor's worker pool inherits it
    import torch
    import torchvision  # noqa: F401 - registers torchvision's ops, which the program calls

    import runner.ops  # noqa: F401 - registers d2bench's ops, which the program calls

    program = torch.export.load(program_path)
    meta = json.loads(meta_path.read_text())
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(package_path),
            inductor_configs={"aot_inductor.metadata": meta},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
