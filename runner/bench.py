"""One run, top to bottom: takes a validated Config, returns the Row it wrote to result.csv.

Parent (`run`): isolates the measurement in a fresh child, turns whatever happens into a Row
(ok, parity_fail, unsupported or error, with the reason) and writes it. Child (`measure`):

    models.build -> inputs.make -> export.wrap -> calibrate (random weights only)
    -> eager fp32 reference -> backends.get(name)(...) -> per size: warm up, parity, time
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from runner import backends, gpus, isolate, provenance, record
from runner.config import Config, options_text
from runner.config import fingerprint as config_fingerprint
from runner.record import Row

log = logging.getLogger(__name__)


def identity(cfg: Config) -> dict:
    return {
        "model": cfg.model.name,
        "variant": cfg.variant or "",
        "export": cfg.export,
        "batch": cfg.batch,
        "postprocess": cfg.postprocess,
        "precision": cfg.precision.name,
        "backend": cfg.backend.name,
        "backend_options": options_text(cfg.backend),
        "shapes": cfg.shapes.name,
        "image_hw": f"{cfg.inputs.height}x{cfg.inputs.width}",
        "device": cfg.device,
        "warmup": cfg.bench.warmup,
        "iters": cfg.bench.iters,
        "command": cfg.command,
        "output_dir": cfg.output_dir,
    }


def describe(cfg: Config) -> str:
    options = options_text(cfg.backend)
    return (
        f"{cfg.variant or cfg.model.name} export={cfg.export} batch={cfg.batch} "
        f"precision={cfg.precision.name} backend={cfg.backend.name}"
        f"{f'[{options}]' if options else ''} shapes={cfg.shapes.name}"
    )


def finished_row(out: Path, fingerprint: str) -> Row | None:
    """The ok row already in `out` for this fingerprint, if any (unreadable files count as none)."""
    try:
        rows = record.read_rows(out / "result.csv")
    except (OSError, ValueError):
        return None
    if len(rows) == 1 and rows[0].status == "ok" and rows[0].fingerprint == fingerprint:
        return rows[0]
    return None


def run(cfg: Config) -> Row:
    """Measure in a child (or inline), write result.csv in cfg.output_dir, return the Row.

    A folder that already holds an ok row of the same fingerprint is kept unless cfg.redo. The
    folder is locked while a run works in it, so two sweeps sharing it measure each run once.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = config_fingerprint(cfg, provenance.code_digest())  # content, not commit
    with record.locked(out / ".lock"):
        kept = None if cfg.redo else finished_row(out, fingerprint)
        if kept is not None:
            log.info(
                "run: kept %s (ok, fingerprint %s; redo=true measures again)",
                describe(cfg),
                fingerprint,
            )
            return kept
        return _measure_and_record(cfg, out, fingerprint)


def _measure_and_record(cfg: Config, out: Path, fingerprint: str) -> Row:
    started = time.monotonic()
    log.info("run: %s -> %s", describe(cfg), out)
    gpu = ""
    try:
        with contextlib.ExitStack() as stack:
            absent = backends.missing(cfg.backend.name)
            if absent:  # nothing to measure: say so now instead of building the model first
                fields = {"status": "unsupported", "error": absent}
            elif cfg.bench.isolate:
                child_cfg, env = cfg, {}
                if cfg.device.startswith("cuda"):  # the child sees only the GPU it claimed
                    gpu = stack.enter_context(gpus.claim(cfg.device))
                    child_cfg, env = (
                        dataclasses.replace(cfg, device="cuda:0"),
                        {"CUDA_VISIBLE_DEVICES": gpu},
                    )
                fields = isolate.call(measure, child_cfg, timeout_s=cfg.bench.timeout_s, env=env)
            else:
                fields = measure(cfg)
    except isolate.ChildFailed as failure:
        if failure.detail:
            (out / "error.txt").write_text(failure.detail)
        fields = {"status": "error", "error": f"{failure.cause}: {failure}"}
    except Exception as error:  # inline mode: the same outcome as a child that raised
        fields = {"status": "error", "error": f"exception: {type(error).__name__}: {error}"}
    if "torch_version" not in fields:  # the child never reported its environment
        fields.update(record.environment(cfg.device), gpu_index=gpu)
    row = Row(**{**identity(cfg), **fields, "fingerprint": fingerprint})
    record.write_rows(out / "result.csv", [row])
    took = time.monotonic() - started
    if row.status in ("ok", "parity_fail"):
        log.info(
            "run: %s in %.0f s: median %.2f ms, p99 %.2f ms, parity %s, %s detections",
            row.status,
            took,
            row.latency_ms_median,
            row.latency_ms_p99,
            "pass" if row.parity_pass else "FAIL",
            row.num_detections,
        )
    else:
        log.warning("run: %s in %.0f s: %s", row.status, took, row.error.splitlines()[0])
    return row


# ---- the child ---------------------------------------------------------------------------


def _configure_child_logging(out: Path) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][child][%(levelname)s] %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(out / "child.log")],
        force=True,
    )


def prepare(cfg: Config, device):
    """Model, inputs and export of a run: (Exported, InputSet, weights label). Random weights
    are calibrated on the opt input here (runner.models.calibrate)."""
    import torch

    from runner import export, inputs, models

    model, weights = models.build(cfg.model, device, cfg.seed)
    images = inputs.make(cfg, device)
    opt = images.images["opt"]
    exported = export.wrap(model, cfg.model, cfg.export, cfg.postprocess, opt)
    if cfg.model.weights is None:
        with torch.no_grad():
            counts = models.calibrate(
                model,
                lambda: exported.module(*opt),
                cfg.model.logit_layers,
                cfg.model.logit_std,
                cfg.model.residual_scale,
            )
        weights += (
            " calibrated("
            + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())
            + ")"
        )
    log.info("weights: %s", weights)
    return exported, images, weights


def eager_detections(exported, images, batch: int) -> dict:
    """Detections of the eager module at every input size (under the caller's autocast)."""
    import torch

    with torch.no_grad():
        return {
            shape: exported.decode(exported.module(*images.images[shape]), batch)
            for shape in images.shapes
        }


def measure(cfg: Config) -> dict:
    """Build, export, optimize, check and time one configuration. Returns Row fields."""
    import torch

    from runner import backends, parity, timing
    from runner.precision import autocast

    out = Path(cfg.output_dir)
    _configure_child_logging(out)
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={cfg.device} but torch sees no CUDA device")
        torch.cuda.set_device(device)
    env = record.environment(str(device), cuda_ready=device.type == "cuda")
    env["gpu_index"] = record.physical_gpu(device.index) if device.type == "cuda" else ""
    env["backend_version"] = backends.version(cfg.backend.name)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fields: dict = dict(env)
    try:
        exported, images, fields["weights"] = prepare(cfg, device)
        reference = eager_detections(exported, images, cfg.batch)
        floor = None
        if cfg.precision.autocast:
            with autocast(cfg.precision, device):
                at_precision = eager_detections(exported, images, cfg.batch)
            floor = parity.worst(
                [
                    parity.compare(reference[shape], at_precision[shape], cfg.bench.match_iou)
                    for shape in images.shapes
                ]
            )
            log.info("floor (eager %s vs eager fp32): %s", cfg.precision.name, asdict(floor))
        log.info(
            "reference (eager fp32): %s detections at %s",
            sum(len(d) for d in reference["opt"]),
            images.hw("opt"),
        )

        optimize = backends.get(cfg.backend.name)
        synchronize()
        started = time.perf_counter()
        options = backends.validate_options(cfg.backend.name, cfg.backend.options)
        fn = optimize(exported, images, cfg.precision, options)

        def call(batch):
            with torch.no_grad(), autocast(cfg.precision, device):
                return fn(*batch)

        for batch in images.images.values():  # lazy compilers compile on the first call
            call(batch)
        synchronize()
        fields["optimize_s"] = time.perf_counter() - started
        log.info("optimize: %.1f s (%s)", fields["optimize_s"], fields["backend_version"])

        protocol = timing.Protocol(cfg.bench.warmup, cfg.bench.iters)
        figures, samples = [], {}
        for shape, batch in images.images.items():
            if device.type == "cuda" and shape == "opt":
                torch.cuda.reset_peak_memory_stats(device)
            samples[shape] = timing.measure(lambda b=batch: call(b), protocol, synchronize)
            if device.type == "cuda" and shape == "opt":
                fields["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
            output = exported.decode(call(batch), cfg.batch)  # same executable as timed
            figures.append(parity.compare(reference[shape], output, cfg.bench.match_iou))
            if shape == "opt":
                fields["num_detections"] = sum(len(d) for d in output)
                if device.type == "cuda":
                    gpu_prof = timing.gpu_profile(lambda b=batch: call(b), synchronize)
                    if gpu_prof is not None:
                        fields["gpu_busy_ms"], fields["gpu_ops"] = gpu_prof.busy_ms, gpu_prof.ops
                        record.write_atomic(out / "profile.txt", _profile_text(gpu_prof, images))
            log.info(
                "%s %s: median %.3f ms over %d calls (%s)",
                shape,
                images.hw(shape),
                statistics.median(samples[shape]),
                len(samples[shape]),
                protocol.describe(),
            )
        _write_samples(out / "samples.csv", samples, images)
        notes = getattr(fn, "notes", None)  # a backend may report on its own work (record.Row)
        if callable(notes):
            fields["backend_notes"] = notes()
    except backends.Unsupported as reason:
        log.warning("unsupported: %s", reason)
        return {**fields, "status": "unsupported", "error": str(reason)}

    fields.update(timing.summarize(samples["opt"], cfg.batch))
    if "min" in samples:
        fields["image_hw_min"], fields["image_hw_max"] = images.hw("min"), images.hw("max")
        for shape in ("min", "max"):
            fields[f"latency_ms_median_{shape}_shape"] = timing.summarize(
                samples[shape], cfg.batch
            )["latency_ms_median"]
    worst = parity.worst(figures)
    broken = parity.verdict(worst, cfg.precision, floor)
    if floor is not None:
        fields.update(
            {
                f"parity_floor_{k}": getattr(floor, k)
                for k in ("match_f1", "box_iou", "score_max_diff", "mask_iou")
            }
        )
    fields.update(
        parity_pass=not broken,
        parity_match_f1=worst.match_f1,
        parity_box_iou=worst.box_iou,
        parity_score_max_diff=worst.score_max_diff,
        parity_mask_iou=worst.mask_iou,
        num_detections_ref=worst.num_reference,
        status="ok" if not broken else "parity_fail",
        error="" if not broken else "parity: " + "; ".join(broken),
    )
    log.info("parity: %s", asdict(worst))
    return fields


def _profile_text(gpu, images) -> str:
    from runner import timing

    return (
        f"# GPU activity of one call at {images.hw('opt')} (the median of "
        f"{timing.PROFILED_CALLS} profiled calls): "
        f"{gpu.busy_ms:.3f} ms busy, {gpu.ops} kernels and copies\n{gpu.table}"
    )


def _write_samples(path: Path, samples: dict[str, list[float]], images) -> None:
    lines = ["shape,image_hw,call,latency_ms"]
    for shape, values in samples.items():
        lines += [f"{shape},{images.hw(shape)},{i},{v!r}" for i, v in enumerate(values)]
    record.write_atomic(path, "\n".join(lines) + "\n")
