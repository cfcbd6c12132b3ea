"""Where a package's own copy of libstdc++ comes from (issue 19; docs/packages.md, Known
problems). On the lent GPU machines every detector package's `wrapper.so` defines libstdc++'s
own functions (link.STATIC_MARKER) and crashes at load, although its link, as logged through
d2bench's compiler (session 10: `results/logs/h100_session10_cxx_first.log`), asks for no static
runtime. This builds a one-convolution package on the GPU through that compiler and asks the
linker itself which input defines the marker (`-Wl,-y,SYMBOL`, `-Wl,--trace`), then loads the
package in a fresh process. Everything goes to stdout:

    python scripts/libstdcxx_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def show(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    text = (done.stdout + done.stderr).strip()
    print(f"$ {shlex.join(command)}  (rc={done.returncode})\n{text}\n", flush=True)
    return text


def toolchain() -> None:
    show("g++", "--version")
    for name in ("libstdc++.so", "libstdc++.a", "libstdc++_nonshared.a", "libgcc_s.so"):
        path = subprocess.run(
            ["g++", f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()
        show("ls", "-laL", path)
        if Path(path).is_file() and Path(path).stat().st_size < 4096:  # a linker script?
            show("cat", path)
    show("sh", "-c", "echo CXX=$CXX; command -v g++ c++; readlink -f $(command -v g++)")
    show("sh", "-c", "g++ -dumpspecs | grep -n -i -B1 -A2 'static-libstdc\\|static-libgcc'")
    # the toolchain alone: a trivial C++ shared object that uses a locale
    with tempfile.TemporaryDirectory() as work:
        source = Path(work, "t.cpp")
        code = "#include <sstream>\nint f() { std::ostringstream s; s << 1; return 0; }\n"
        source.write_text(code)
        show("g++", "-shared", "-fPIC", "-o", f"{work}/t.so", str(source))
        show(
            "sh",
            "-c",
            f"nm -D --defined-only {work}/t.so | grep -c codecvt; "
            f"readelf -d {work}/t.so | grep NEEDED",
        )


def build(out: Path) -> Path:
    import torch

    from runner.backends.aot_package import link

    print("compiler:", link.use_shared_runtime(), "via", os.environ.get("CXX"), flush=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).cuda().eval()
    example = (torch.randn(1, 3, 32, 32, device="cuda"),)
    with torch.no_grad():
        program = torch.export.export(model, example, strict=False)
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(out / "tiny.pt2"))
    print("package", path, os.path.getsize(path), "bytes; runtime:", link.runtime(Path(path)))
    return Path(path)


def inspect_package(package: Path) -> None:
    from runner.backends.aot_package import link

    with zipfile.ZipFile(package) as archive, tempfile.TemporaryDirectory() as work:
        for name in archive.namelist():
            if name.endswith(".so"):
                path = archive.extract(name, work)
                show("sh", "-c", f"nm -D --defined-only {path} | grep -c ' [TWV] _ZN.*St' ")
                show("sh", "-c", f"nm -D --defined-only {path} | grep {link.STATIC_MARKER}")
                show("sh", "-c", f"readelf -d {path} | grep NEEDED")


def relink(log: Path, out: Path) -> None:
    """The log's last shared-object link again, the linker saying who defines the marker."""
    from runner.backends.aot_package import link

    lines = [line for line in log.read_text().splitlines() if " -shared" in f" {line}"]
    if not lines:
        print("no shared link in", log)
        return
    args = shlex.split(lines[-1])
    target = args.index("-o") + 1
    args[target] = str(out / "relinked.so")
    trace = [f"-Wl,-y,{link.STATIC_MARKER}", "-Wl,--trace", "-v"]
    show(str(link.COMPILER), *args, *trace)
    show("sh", "-c", f"nm -D --defined-only {out / 'relinked.so'} | grep {link.STATIC_MARKER}")
    objects = [a for a in args if a.endswith(".o")]
    for obj in objects:
        show("sh", "-c", f"nm -C --defined-only {obj} | grep -c codecvt")


def load(package: Path) -> None:
    code = (
        "import torch, sys; m = torch._inductor.aoti_load_package(sys.argv[1]); "
        "print('loaded; output', tuple(m(torch.randn(1, 3, 32, 32, device='cuda')).shape))"
    )
    show(sys.executable, "-c", code, str(package))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "cxx_probe.log"
    os.environ["D2BENCH_CXX_LOG"] = str(log)
    toolchain()
    package = build(args.out)
    inspect_package(package)
    relink(log, args.out)
    load(package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
