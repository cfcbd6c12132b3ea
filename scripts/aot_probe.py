"""AOTInductor probe (issue 9's stretch, an experiment, not a backend yet): can static_graph's
rewritten forward be exported with torch.export, compiled ahead of time by AOTInductor into a
package, and run from that package in a fresh process that imports neither detectron2 nor
d2bench's model code, with the same answers and speed as the in-process replay?

    python scripts/aot_probe.py build --out DIR -- model=retinanet precision=fp16
    python scripts/aot_probe.py time --out DIR

`build` runs a d2bench run's preparation (build, reference, static_graph's optimize, warm-up,
parity: runner.run.measurement) for the config the overrides compose (backend=static_graph is
added), times the in-process replay, exports the rewritten forward at the opt input (under the
run's autocast), compiles it with `torch._inductor.aoti_compile_and_package` into DIR/model.pt2,
and saves the input and the forward's outputs (DIR/io.pt) and a summary (DIR/build.json).
`time`, in a new process, loads the package, checks its outputs against the saved ones and
times it: plain calls, then the same call captured as one CUDA graph (DIR/time.json). Both
print their JSON. Timing: 5 blocks of 50 synchronized calls after 30 warm-up calls, median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP, BLOCKS, ITERS = 30, 5, 50


def _median_ms(call, synchronize) -> float:
    """d2bench's timing (runner.run.timing): WARMUP calls, then the median of BLOCKS blocks'
    medians of ITERS synchronized calls."""
    from runner.run import timing

    timing.measure(call, timing.Protocol(WARMUP, 0), synchronize)
    blocks = [timing.timed_block(call, ITERS, 0, synchronize, "collect") for _ in range(BLOCKS)]
    return statistics.median(statistics.median(samples) for samples in blocks)


def build(out: Path, overrides: list[str]) -> dict:
    import hydra
    import torch

    from runner.config import register_schema, to_config
    from runner.run.measurement import Measurement

    register_schema()
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        composed = hydra.compose(
            "config",
            overrides=[*overrides, "backend=static_graph", f"output_dir={out}", "command=aot"],
        )
    cfg = to_config(composed)
    measurement = Measurement(cfg, out)
    prepared = measurement.prepare()
    if not prepared.measured:
        raise SystemExit(f"prepare: {prepared.status}: {prepared.error}")
    images = measurement.images.images["opt"]
    device = images[0].device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    replay_ms = _median_ms(lambda: measurement._call(images), sync)
    detector = measurement.fn.forward  # the rewritten forward the replay captured
    precision = cfg.precision
    dtype = getattr(torch, precision.dtype) if precision.autocast else None

    class Flat(torch.nn.Module):
        """The rewritten forward under the run's autocast, its slots as a flat tuple."""

        def __init__(self):
            super().__init__()
            self.detector = detector

        def forward(self, *ims):
            with torch.autocast(device.type, dtype=dtype or torch.float16, enabled=bool(dtype)):
                slots = self.detector(*ims)
            fields = (getattr(slots, f.name) for f in dataclasses.fields(slots))
            return tuple(t for t in fields if isinstance(t, torch.Tensor))

    flat = Flat().eval()
    with torch.no_grad():
        expected = flat(*images)
        started = time.perf_counter()
        program = torch.export.export(flat, tuple(images), strict=False)
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=str(out / "model.pt2")
        )
        compile_s = time.perf_counter() - started
    torch.save(
        {"images": [im.cpu() for im in images], "expected": [t.cpu() for t in expected]},
        out / "io.pt",
    )
    return {
        "config": " ".join(overrides),
        "precision": precision.name,
        "device": str(device),
        "torch": torch.__version__,
        "replay_ms_in_process": replay_ms,
        "export_s": export_s,
        "graph_nodes": len(program.graph.nodes),
        "aoti_compile_s": compile_s,
        "package": package,
        "package_mb": Path(package).stat().st_size / 1e6,
        "outputs": [list(t.shape) for t in expected],
    }


def time_package(out: Path) -> dict:
    import torch

    loaded = torch._inductor.aoti_load_package(str(out / "model.pt2"))
    io = torch.load(out / "io.pt")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = [im.to(device) for im in io["images"]]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        got = loaded(*images)
        diffs = []
        for want, have in zip(io["expected"], got, strict=True):
            have = have.cpu()
            if want.dtype.is_floating_point:
                diffs.append(
                    float((want.float() - have.float()).abs().max()) if want.numel() else 0.0
                )
            else:
                diffs.append(0.0 if torch.equal(want, have) else float("inf"))
        plain_ms = _median_ms(lambda: loaded(*images), sync)
        result = {"device": str(device), "max_abs_diff_per_output": diffs, "plain_ms": plain_ms}
        if device.type == "cuda":
            static_in = [im.clone() for im in images]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    loaded(*static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = loaded(*static_in)

            def replay():
                for dst, src in zip(static_in, images, strict=True):
                    dst.copy_(src)
                graph.replay()
                return static_out

            result["graph_ms"] = _median_ms(replay, sync)
            replay()
            sync()
            result["graph_same_as_plain"] = all(
                torch.equal(a, b) for a, b in zip(static_out, got, strict=True)
            )
    result["detectron2_imported"] = "detectron2" in sys.modules
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("build", "time"))
    parser.add_argument("--out", type=Path, required=True)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1 :]  # after --: the run's config overrides
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "build":
        summary = build(args.out.resolve(), args.overrides)
    else:
        if args.overrides:
            parser.error("time takes no overrides: the package holds the model")
        summary = time_package(args.out)
    text = json.dumps(summary, indent=1)
    (args.out / f"{args.step}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
