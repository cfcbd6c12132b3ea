"""Link: which C++ runtime a package's shared objects carry, and the compiler that makes them
carry none of their own.

A package's `wrapper.so` is C++ and runs inside a process that already has the C++ runtime
loaded (libtorch needs `libstdc++.so.6`). On the lent GPU image every package's `wrapper.so`
carried a static copy of libstdc++ (it needs no `libstdc++.so.6`, and defines `std::codecvt`
itself): that image's compiler, `CXX=/opt/gcc/bin/g++`, searches a library path that holds
`libstdc++.a` and no `libstdc++.so`, so the driver's own `-lstdc++` linked the archive. The
linker said so (`-Wl,--trace`, session 11: results/logs/h100_session11_libstdcxx_probe.log).
Every such package died with SIGSEGV at its construction, in `std::regex` asking a locale for a
facet: two copies of libstdc++ in one process, each with its own numbering of locale facets
(our working explanation; docs/packages.md, Known problems). The shared libstdc++, the copy the
process already has, linked by path, leaves one.

    COMPILER                 runner/backends/aot_package/g++-shared-libstdc++: the real
                             compiler with -static-libstdc++/-static-libgcc and a named
                             libstdc++.a dropped, and a shared object linked with
                             the shared libstdc++ (by path where D2BENCH_LIBSTDCXX names it)
                             after its inputs, ahead of whatever the driver adds (everything
                             else passes through)
    use_shared_runtime()     in the compile worker, before Inductor compiles: Inductor (and its
                             pool of compile workers) calls COMPILER, which calls the compiler
                             Inductor would have called, and links loaded_libstdcxx()
    loaded_libstdcxx()       the libstdc++.so.6 this process has loaded
    runtime(package)         "shared", "static" or "none": what the package's .so files link
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

COMPILER = Path(__file__).resolve().with_name("g++-shared-libstdc++")

# a function of libstdc++'s own (not a template instantiated in the caller): an object that
# defines it carries libstdc++'s code
STATIC_MARKER = "_ZNKSt7codecvtIcc11__mbstate_tE10do_unshiftERS0_PcS3_RS3_"


def use_shared_runtime() -> str | None:
    """Make COMPILER the compiler of every Inductor compile this process and its children start:
    call it before Inductor compiles anything (its pool of compile workers, processes of their
    own, takes the compiler from the environment when it starts). Returns the real compiler
    COMPILER runs, or None where nothing was changed (not Linux, a clang, no compiler found,
    COMPILER not executable). D2BENCH_CXX_LOG=FILE makes COMPILER append each command line to
    FILE."""
    if not sys.platform.startswith("linux"):
        return None
    if not os.access(COMPILER, os.X_OK):
        log.warning("%s is missing or not executable: packages link as Inductor asks", COMPILER)
        return None
    loaded = loaded_libstdcxx()
    if loaded is not None:
        os.environ.setdefault("D2BENCH_LIBSTDCXX", loaded)
    requested = os.environ.get("CXX") or "g++"
    if requested == str(COMPILER):  # already set up (a child of a process that called this)
        return os.environ.get("D2BENCH_REAL_CXX")
    real = shutil.which(requested)
    if real is None or "clang" in Path(requested).name:
        return None
    os.environ["D2BENCH_REAL_CXX"] = real
    os.environ["CXX"] = str(COMPILER)  # Inductor's config.cpp.cxx reads it when imported
    if "torch._inductor.config" in sys.modules:  # imported already: set it there as well
        sys.modules["torch._inductor.config"].cpp.cxx = (None, str(COMPILER))
    builder = sys.modules.get("torch._inductor.cpp_builder")
    for name in ("cpp_compiler_search", "get_cpp_compiler"):  # what Inductor may have cached
        cached = getattr(builder, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
    return real


def loaded_libstdcxx() -> str | None:
    """The libstdc++.so.6 this process has loaded (libtorch needs it), by path, or None: the
    copy a package's wrapper.so must share. COMPILER links it by path, because a toolchain's
    -lstdc++ may find only libstdc++.a: the lent GPU image's g++ (/opt/gcc/bin/g++, a wrapper
    with its own library path) did, and every package carried a static copy (session 11,
    results/logs/h100_session11_libstdcxx_probe.log)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if Path(path).name.startswith("libstdc++.so") and Path(path).is_file():
            return path
    return None


def runtime(package: Path) -> str:
    """How the shared objects in `package` get libstdc++: "static" (one carries libstdc++'s
    code, whether or not it also needs libstdc++.so.6), "shared" (they need libstdc++.so.6 and
    carry none of it), "none" (neither), or "unknown" (no readelf/nm here to tell)."""
    if not (shutil.which("readelf") and shutil.which("nm")):
        return "unknown"
    found = set()
    with zipfile.ZipFile(package) as archive, tempfile.TemporaryDirectory() as work:
        for name in archive.namelist():
            if not name.endswith(".so"):
                continue
            path = archive.extract(name, work)
            defined = subprocess.run(
                ["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True
            ).stdout
            if STATIC_MARKER in defined:  # libstdc++'s own code inside, whatever it needs too
                found.add("static")
                continue
            dynamic = subprocess.run(
                ["readelf", "-d", path], capture_output=True, text=True, check=True
            ).stdout
            if "[libstdc++.so.6]" in dynamic:
                found.add("shared")
    if "static" in found:
        return "static"
    return "shared" if found else "none"
