"""The C++ loader (cpp/load_package.cpp) against Python on the same package: same detections,
and the latency of each, measured back to back on this host.

    PYTHONPATH=. python scripts/cpp_loader.py --binary build/cpp/load_package \
        [--torchvision LIB.so] [--warmup 50] [--iters 200] --csv OUT.csv PACKAGE.pt2 ...
    ... --cache outputs/packages --precision fp16      # the cache's packages of a precision

For each package: the project's sample photo (runner.run.inputs: covered and cropped to the
package's input size, in its family's pixel format) written as the raw float32 file the C++
program reads; the C++ program run on it (plain calls, and where CUDA, one CUDA graph
replayed: copy in, replay, counts back, slice); the same package loaded in this process
(`aoti_load_package`, single-threaded runner) and timed the same two ways through
static_graph's Replay, the aot_package backend's timed call; the C++ detections compared with
Python's. One CSV row per package and loader (`cpp`, `python`): latencies in ms (median and
p99 of `--iters` calls after `--warmup`), the load time in s (Python's: after Inductor's CPU ISA
probe, isa_probe_s), the detections' agreement, the machine, the versions, the commit and this
command.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# a process that loads packages starts no pool of compile workers (aot_package/compile_worker.py)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torchvision  # noqa: E402, F401 - registers torchvision::roi_align, which packages call

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import runner.ops  # noqa: E402, F401 - the CPU kernel of d2bench::greedy_nms (CPU packages)

COLUMNS = (
    "package",
    "model",
    "precision",
    "inputs",
    "loader",
    "device",
    "gpu_name",
    "torch_version",
    "load_s",
    "isa_probe_s",
    "plain_ms_median",
    "plain_ms_p99",
    "graph_ms_median",
    "graph_ms_p99",
    "warmup",
    "iters",
    "counts",
    "same_detections",
    "box_max_diff",
    "score_max_diff",
    "git_sha",
    "timestamp",
    "command",
)


def package_images(meta: dict[str, str]) -> torch.Tensor:
    """The sample photo at the package's input size, batch times: [N, 3, H, W] float32."""
    from runner.run.inputs import cover_and_crop, load_photo, to_tensor

    batch, shape = meta["d2bench.inputs"].split(" x ")
    _, height, width = (int(v) for v in shape.split("]")[0].strip("[").split(","))
    image = to_tensor(cover_and_crop(load_photo(None), height, width), "detectron2")
    return image[None].expand(int(batch), -1, -1, -1).contiguous()


def read_detections(path: Path) -> list[list[tuple]]:
    """The C++ program's --out file: per image its count, then one line per detection."""
    images, lines = [], iter(path.read_text().split("\n"))
    for line in lines:
        if not line.strip():
            continue
        count = int(line)
        rows = [next(lines).split() for _ in range(count)]
        images.append([(int(r[0]), *(float(v) for v in r[1:])) for r in rows])
    return images


def run_cpp(binary: Path, package: Path, images: Path, args, out: Path) -> dict[str, str]:
    command = [str(binary), str(package), str(images), "--out", str(out)]
    command += ["--warmup", str(args.warmup), "--iters", str(args.iters)]
    if args.torchvision:
        command += ["--torchvision", args.torchvision]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def time_python(loaded, images: tuple, device: torch.device, graphs: bool, args) -> list[float]:
    from runner.backends.static_graph.capture import Replay
    from runner.backends.static_graph.outputs import Fields
    from runner.run import timing

    fields = Fields.of_metadata(loaded.get_metadata())
    replay = Replay(loaded, fields, fallback=None, graphs=graphs)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        return timing.timed_block(lambda: replay(*images), args.iters, args.warmup, sync)


def compare(python_flat: tuple, cpp: list[list[tuple]]) -> tuple[bool, float, float]:
    """(same counts and classes, largest box difference, largest score difference)."""
    same, box_diff, score_diff = len(cpp) * 3 == len(python_flat), 0.0, 0.0
    for i, rows in enumerate(cpp):
        boxes, scores, classes = (t.cpu() for t in python_flat[3 * i : 3 * i + 3])
        if len(rows) != len(boxes) or [r[0] for r in rows] != classes.tolist():
            return False, float("inf"), float("inf")
        if rows:
            theirs = torch.tensor([r[2:] for r in rows], dtype=torch.float64)
            box_diff = max(box_diff, float((theirs - boxes.double()).abs().max()))
            got = torch.tensor([r[1] for r in rows], dtype=torch.float64)
            score_diff = max(score_diff, float((got - scores.double()).abs().max()))
    return same, box_diff, score_diff


def measure(package: Path, args, work: Path) -> list[dict]:
    from runner.backends.aot_package import build
    from runner.backends.static_graph.capture import Replay
    from runner.backends.static_graph.outputs import Fields
    from runner.provenance import git_sha

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded, load_s, isa_probe_s = build.load(package, device)
    meta = loaded.get_metadata()
    if meta.get("d2bench.device", "cpu") != device.type:
        raise SystemExit(f"{package}: built for {meta.get('d2bench.device')}, this is {device}")
    fields = Fields.of_metadata(meta)
    if fields.answers != "instances":  # compare() reads boxes, scores, classes per image
        raise SystemExit(
            f"{package}: its detections are {fields.answers}; this comparison reads a "
            "detector's instances (boxes, scores, classes)"
        )
    theirs = build.calls(meta, "torchvision::")
    if theirs and not args.torchvision:
        raise SystemExit(
            f"{package}: it calls {', '.join(theirs)}, which only torchvision's library registers; "
            "pass --torchvision LIB.so (torchvision's _C.so), or build it with roi_align: op"
        )
    batch = package_images(meta)
    raw = work / f"{package.stem}.bin"
    batch.numpy().tofile(raw)
    images = tuple(batch.to(device).unbind(0))
    with torch.no_grad():
        python_flat = Replay(loaded, fields, fallback=None, graphs=False)(*images)
    cpp = run_cpp(args.binary, package, raw, args, work / f"{package.stem}.txt")
    same, box_diff, score_diff = compare(python_flat, read_detections(work / f"{package.stem}.txt"))
    common = {
        "package": package.name,
        "model": meta.get("d2bench.model") or meta.get("d2bench.detector", ""),
        "precision": meta.get("d2bench.precision", ""),
        "inputs": meta["d2bench.inputs"],
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "torch_version": torch.__version__,
        "warmup": args.warmup,
        "iters": args.iters,
        "counts": cpp["counts"],
        "git_sha": git_sha(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": args.command,
    }
    rows = [
        {
            **common,
            "loader": "cpp",
            "load_s": float(cpp["load_s"]),
            "isa_probe_s": "",
            "plain_ms_median": float(cpp["plain_ms_median"]),
            "plain_ms_p99": float(cpp["plain_ms_p99"]),
            "graph_ms_median": float(cpp["graph_ms_median"]) if "graph_ms_median" in cpp else "",
            "graph_ms_p99": float(cpp["graph_ms_p99"]) if "graph_ms_p99" in cpp else "",
            "same_detections": same,
            "box_max_diff": box_diff,
            "score_max_diff": score_diff,
        }
    ]
    plain = time_python(loaded, images, device, False, args)
    graphed = time_python(loaded, images, device, True, args) if device.type == "cuda" else []
    rows.append(
        {
            **common,
            "loader": "python",
            "load_s": load_s,
            "isa_probe_s": isa_probe_s,
            "plain_ms_median": statistics.median(plain),
            "plain_ms_p99": _p99(plain),
            "graph_ms_median": statistics.median(graphed) if graphed else "",
            "graph_ms_p99": _p99(graphed) if graphed else "",
            "same_detections": True,
            "box_max_diff": 0.0,
            "score_max_diff": 0.0,
        }
    )
    return rows


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def cached(cache: Path, precision: str) -> list[Path]:
    """The aot_package backend's packages in `cache` (their build records) of `precision`, at
    the run's own input size (shape opt), one per model, in model order."""
    found = {}
    for record in sorted(cache.glob("*.json")):
        meta = json.loads(record.read_text())["metadata"]
        if meta.get("d2bench.precision") == precision and meta.get("d2bench.shape") == "opt":
            found[record.with_suffix(".pt2")] = meta.get("d2bench.detector", "")
    return sorted((p for p in found if p.is_file()), key=lambda p: (found[p], p.name))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", type=Path)
    parser.add_argument("--cache", type=Path, help="take the packages of this cache folder")
    parser.add_argument("--precision", default="fp16", help="with --cache: of this precision")
    parser.add_argument("--binary", type=Path, required=True)
    parser.add_argument("--torchvision", default="", help="torchvision's native library (.so)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "scripts/cpp_loader.py", *argv])
    if args.cache is not None:
        args.packages += cached(args.cache, args.precision)
    if not args.packages:
        parser.error("no packages: name them, or --cache DIR with packages of --precision")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for package in args.packages:
            rows += measure(package, args, Path(work))
            timings = "; ".join(
                f"{r['loader']} plain {r['plain_ms_median']:.3f} ms, graph {r['graph_ms_median']}"
                for r in rows[-2:]
            )
            same = rows[-2]["same_detections"]
            print(f"{package.name}: {timings}; same detections: {same}", flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return 0 if all(r["same_detections"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
