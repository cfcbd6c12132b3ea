"""The measuring side of one run: takes a validated Config, builds and optimizes the model once,
then answers the parent's requests (runner.workers) with Row fields and latency samples.

    prepare()         models.build -> inputs.make -> export.wrap -> calibrate (random weights)
                      -> reference: eager fp32, TF32 off (+ the floor: runner.fidelity)
                      -> optimize and first call at each size -> bench.warmup calls -> parity
                      on the timed executable. Returns Row fields (status ok | parity_fail |
                      unsupported). Every call and the optimize step run at the precision
                      (runner.precision.at_precision: autocast, strict fp32 where asked).
    time_block(r)     gc as bench.gc says, then at each size bench.rewarm untimed and
                      bench.iters timed calls; returns {"samples": {shape: [ms, ...]}, ...}.
    finish()          the profiler pass (GPU: busy time and kernels of one call, profile.txt)
                      and the backend's notes; done once, after the last block.

The parent decides when each request runs, so a block never overlaps another child's block.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from runner import record
from runner.config import Config
from runner.fidelity import eager_detections

__all__ = ["Measurement", "eager_detections", "prepare_model"]

log = logging.getLogger("runner.bench")


def configure_child_logging(out: Path) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][child][%(levelname)s] %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(out / "child.log")],
        force=True,
    )


def prepare_model(cfg: Config, device):
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


class Measurement:
    """One configuration, built once in this process; see the module docstring."""

    def __init__(self, cfg: Config, log_to_folder: bool = True):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.log_to_folder = log_to_folder
        self.fn = None
        self.images = None
        self.stages: dict[str, float] = {}  # seconds per stage, logged (README: overhead)

    # ---- helpers ----

    def _synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _call(self, batch):
        import torch

        from runner.precision import at_precision

        with torch.no_grad(), at_precision(self.cfg.precision, self.device):
            return self.fn(*batch)

    def _stage(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - started
        return now

    # ---- requests ----

    def prepare(self) -> dict:
        import torch

        from runner import backends, fidelity, parity, timing
        from runner.precision import strict_if_asked

        cfg = self.cfg
        if self.log_to_folder:
            configure_child_logging(self.out)
        clock = time.perf_counter()
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device={cfg.device} but torch sees no CUDA device")
            torch.cuda.set_device(device)
        self.device = device
        fields = record.environment(str(device), cuda_ready=device.type == "cuda")
        fields["gpu_index"] = record.physical_gpu(device.index) if device.type == "cuda" else ""
        fields["backend_version"] = backends.version(cfg.backend.name)
        clock = self._stage("environment", clock)
        try:
            exported, images, fields["weights"] = prepare_model(cfg, device)
            self.exported, self.images = exported, images
            clock = self._stage("build", clock)
            reference, floor = fidelity.reference_and_floor(
                exported, images, cfg.batch, cfg.precision, device, cfg.bench.match_iou
            )
            log.info(
                "reference (%s): %s detections at %s",
                fidelity.REFERENCE,
                sum(len(d) for d in reference["opt"]),
                images.hw("opt"),
            )
            clock = self._stage("reference", clock)

            optimize = backends.get(cfg.backend.name)
            self._synchronize()
            started = time.perf_counter()
            options = backends.validate_options(cfg.backend.name, cfg.backend.options)
            with strict_if_asked(cfg.precision):
                self.fn = optimize(exported, images, cfg.precision, options)
            for batch in images.images.values():  # lazy compilers compile on the first call
                self._call(batch)
            self._synchronize()
            fields["optimize_s"] = time.perf_counter() - started
            log.info("optimize: %.1f s (%s)", fields["optimize_s"], fields["backend_version"])
            clock = self._stage("optimize", clock)

            warmup = timing.Protocol(cfg.bench.warmup, 0)
            for batch in images.images.values():
                timing.measure(lambda b=batch: self._call(b), warmup, self._synchronize)
            clock = self._stage("warmup", clock)
        except backends.Unsupported as reason:
            log.warning("unsupported: %s", reason)
            return {**fields, "status": "unsupported", "error": str(reason)}

        # parity on the executable that is timed, after its warm-up
        figures = []
        for shape, batch in images.images.items():
            output = exported.decode(self._call(batch), cfg.batch)
            figures.append(parity.compare(reference[shape], output, cfg.bench.match_iou))
            if shape == "opt":
                fields["num_detections"] = sum(len(d) for d in output)
        worst = parity.worst(figures)
        broken = parity.verdict(worst, cfg.precision, floor)
        fields.update(fidelity.parity_fields(worst, floor, broken))
        if "min" in images.images:
            fields["image_hw_min"], fields["image_hw_max"] = images.hw("min"), images.hw("max")
        log.info("parity: %s", asdict(worst))
        self._stage("parity", clock)
        return fields

    def time_block(self, repeat: int) -> dict:
        """One timed block at every size; see the module docstring."""
        import torch

        from runner import timing

        cfg, cuda = self.cfg, self.device.type == "cuda"
        started = time.perf_counter()
        samples, peak = {}, None
        for shape, batch in self.images.images.items():
            if cuda and shape == "opt":
                torch.cuda.reset_peak_memory_stats(self.device)
            samples[shape] = timing.timed_block(
                lambda b=batch: self._call(b),
                cfg.bench.iters,
                cfg.bench.rewarm,
                self._synchronize,
                cfg.bench.gc,
            )
            if cuda and shape == "opt":
                peak = torch.cuda.max_memory_allocated(self.device) / 1e6
            log.info(
                "repeat %d: %s %s: median %.3f ms over %d calls",
                repeat,
                shape,
                self.images.hw(shape),
                statistics.median(samples[shape]),
                len(samples[shape]),
            )
        self._stage("timed blocks", started)
        return {
            "samples": samples,
            "image_hw": {shape: self.images.hw(shape) for shape in samples},
            "peak_mem_mb": peak,
        }

    def finish(self) -> dict:
        """The profiler pass and the backend's notes: Row fields."""
        from runner import timing

        started = time.perf_counter()
        fields: dict = {}
        if self.device.type == "cuda":
            batch = self.images.images["opt"]
            profile = timing.gpu_profile(lambda: self._call(batch), self._synchronize)
            if profile is not None:
                fields["gpu_busy_ms"], fields["gpu_ops"] = profile.busy_ms, profile.ops
                record.write_atomic(self.out / "profile.txt", self._profile_text(profile))
        notes = getattr(self.fn, "notes", None)  # a backend may report on its own work
        if callable(notes):
            fields["backend_notes"] = notes()
        self._stage("profile", started)
        log.info("stages (s): %s", ", ".join(f"{k} {v:.2f}" for k, v in self.stages.items()))
        fields["stages"] = dict(self.stages)
        return fields

    def _profile_text(self, gpu) -> str:
        from runner import timing

        return (
            f"# GPU activity of one call at {self.images.hw('opt')} (the median of "
            f"{timing.PROFILED_CALLS} profiled calls): "
            f"{gpu.busy_ms:.3f} ms busy, {gpu.ops} kernels and copies\n{gpu.table}"
        )
