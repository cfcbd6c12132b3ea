"""The measuring side of one run: takes a validated Config and its folder, builds and optimizes
the model once, then answers the parent's requests (runner.run.workers) with Row fields and
latency samples.

    prepare()         the steps, each a method returning its typed value (runner.run.steps):
                      environment -> build (models.build, inputs.make, export.wrap, calibrate
                      random weights) -> reference (eager fp32, TF32 off, + the floor) ->
                      flops (runner.run.flops: FlopCounterMode on the eager model) ->
                      optimize (and a first call at each size) -> warm_up -> parity (on the
                      timed executable). Returns Prepared: ok | parity_fail | unsupported.
                      Every call runs at the precision (runner.precision.at_precision).
                      With dataset=..., the reference step also runs the eager fp32 strict
                      model over the dataset (before any backend touches the model) and
                      scores it: the accuracy pass's reference.
    time_block(r)     gc as bench.gc says, then at each size bench.rewarm untimed and
                      bench.iters timed calls: a Block of latency samples.
    accuracy()        with dataset=...: the timed callable over the dataset, scored, against
                      the reference's scores (runner.accuracy.evaluate): Accuracy.
    finish()          the profiler pass (GPU: busy time and kernels of one call, profile.txt),
                      the stage pass (runner.stages: one uncaptured call's time per stage)
                      and the backend's notes: Finished; done once, after the last block.

The parent decides when each request runs, so a block never overlaps another child's block.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from runner.config import NO_DATASET, Config, options_text, parse_device
from runner.run import flops, record
from runner.run.steps import (
    Accuracy,
    Block,
    Built,
    Environment,
    Finished,
    Optimized,
    Parity,
    Prepared,
    Reference,
)

__all__ = ["Measurement", "build"]

log = logging.getLogger("runner.run.bench")


def child_label(cfg: Config) -> str:
    """Who a child's log lines are from: its backend, with the options that differ from the
    backend's file ("backend=inductor[mode=max-autotune]"). The children of a session differ
    only there, and their lines interleave on the parent's terminal."""
    options = options_text(cfg)
    return f"backend={cfg.backend.name}" + (f"[{options}]" if options else "")


def configure_child_logging(out: Path, label: str) -> None:
    label = label.replace("%", "%%")  # the format's own placeholders stay the only ones
    logging.basicConfig(
        level=logging.INFO,
        format=f"[%(asctime)s][child {label}][%(levelname)s] %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(out / "child.log")],
        force=True,
    )


def build(cfg: Config, device) -> Built:
    """The build step: model, inputs and export of a run. Random weights are calibrated on the
    opt input here (runner.run.models.calibrate)."""
    import torch

    from runner.run import export, inputs, models

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
    return Built(exported, images, weights)


class Measurement:
    """One configuration, built once in this process; see the module docstring."""

    def __init__(self, cfg: Config, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)  # the run's folder: its log and profile
        self.fn = None
        self.images = None
        self.stages: dict[str, float] = {}  # seconds per stage, logged (docs/running.md: Timing)
        self.owned = False  # the backend applies the dtype itself (runner.precision)
        self.exported = None
        self.dataset = None  # runner.accuracy.dataset.Dataset, with dataset=...
        self.reference_scores: dict = {}  # the reference's COCOeval figures by kind

    # ---- helpers ----

    def _synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _call(self, batch):
        return self._call_with(self.fn, batch)

    def _call_with(self, fn, batch):
        import torch

        from runner.precision import at_precision

        with torch.no_grad(), at_precision(self.cfg.precision, self.device, self.owned):
            return fn(*batch)

    def _stage(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - started
        return now

    # ---- requests ----

    def prepare(self) -> Prepared:
        """The steps before the timed blocks, in order; see the module docstring."""
        from runner import backends

        configure_child_logging(self.out, child_label(self.cfg))
        environment = self._step("environment", self.environment)
        built = None
        try:
            built = self._step("build", build, self.cfg, self.device)
            self.images, self.exported = built.images, built.exported
            reference = self._step("reference", self.reference, built)
            gflop = self._step("flops", self.count_flops, built)
            self._step("accuracy reference", self.accuracy_reference, built)
            optimized = self._step("optimize", self.optimize, built)
            self.fn = optimized.fn
            self._step("warmup", self.warm_up)
        except backends.Unsupported as reason:
            log.warning("unsupported: %s", reason)
            weights = built.weights if built is not None else ""
            return Prepared("unsupported", str(reason), environment, weights)
        parity = self._step("parity", self.parity, built, reference)
        return Prepared(
            parity.status,
            parity.error,
            environment,
            built.weights,
            optimized.optimize_s,
            parity,
            gflop_per_call=gflop,
            peak_tflop_per_s=flops.peak_tflops(environment.gpu_name, self.cfg.precision),
        )

    def _step(self, name: str, step, *args):
        started = time.perf_counter()
        try:
            return step(*args)
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - started

    # ---- the steps ----

    def environment(self) -> Environment:
        """The device this process works on (CUDA set up) and the Row's environment columns."""
        import torch

        from runner import backends

        kind, index = parse_device(self.cfg.device)
        device = torch.device(kind, index or 0) if kind == "cuda" else torch.device(kind)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device={self.cfg.device} but torch sees no CUDA device")
            torch.cuda.set_device(device)
        self.device = device
        cuda = device.type == "cuda"
        return Environment(
            **record.environment(str(device), cuda_ready=cuda),
            gpu_index=record.physical_gpu(device.index) if cuda else "",
            backend_version=backends.version(self.cfg.backend.name),
        )

    def reference(self, built: Built) -> Reference:
        """Eager fp32 with TF32 off on every input, and the floor (runner.run.fidelity)."""
        from runner.run import fidelity

        cfg = self.cfg
        detections, floor = fidelity.reference_and_floor(
            built.exported,
            built.images,
            cfg.batch,
            cfg.precision,
            self.device,
            cfg.bench.match_iou,
            cfg.seed,
        )
        log.info(
            "reference (%s): %s detections at %s",
            fidelity.REFERENCE,
            sum(len(d) for d in detections["opt"]),
            built.images.hw("opt"),
        )
        return Reference(detections, floor)

    def count_flops(self, built: Built) -> float | None:
        """GFLOP of one call of the eager model at fp32 on the opt input (runner.run.flops),
        before any backend reworks the model; None where the count fails (logged: a missing
        count is no reason to lose the run)."""
        from runner.precision import strict_fp32

        batch = built.images.images["opt"]
        try:
            with strict_fp32():
                counted = flops.count(lambda: built.exported.module(*batch))
        except Exception:  # noqa: BLE001 - the row says so with empty cells
            log.warning("FLOP count failed", exc_info=True)
            return None
        log.info("flops: %.2f GFLOP per call at %s", counted / 1e9, built.images.hw("opt"))
        return counted / 1e9

    def optimize(self, built: Built) -> Optimized:
        """The backend's optimize, then a first call at each size (lazy compilers compile on
        it): optimize_s is both."""
        from runner import backends
        from runner.precision import strict_if_asked

        cfg = self.cfg
        optimize = backends.get(cfg.backend.name)
        self._synchronize()
        started = time.perf_counter()
        options = backends.validate_options(cfg.backend.name, cfg.backend.options)
        self.owned = backends.owns_precision(cfg.backend.name)
        with strict_if_asked(cfg.precision):
            self.fn = optimize(built.exported, built.images, cfg.precision, options)
        for batch in built.images.images.values():
            self._call(batch)
        self._synchronize()
        seconds = time.perf_counter() - started
        log.info("optimize: %.1f s (%s)", seconds, backends.version(cfg.backend.name))
        return Optimized(self.fn, seconds)

    def warm_up(self) -> None:
        from runner.run import timing

        warmup = timing.Protocol(self.cfg.bench.warmup, 0)
        for batch in self.images.images.values():
            timing.measure(lambda b=batch: self._call(b), warmup, self._synchronize)

    def parity(self, built: Built, reference: Reference) -> Parity:
        """The timed executable, after its warm-up, against the reference at every size."""
        from runner.run import fidelity
        from runner.run import parity as figures_of

        cfg, images = self.cfg, built.images
        figures, found = [], None
        for shape, batch in images.images.items():
            output = built.exported.decode(self._call(batch), cfg.batch)
            figures.append(
                figures_of.compare(reference.detections[shape], output, cfg.bench.match_iou)
            )
            if shape == "opt":
                found = sum(len(d) for d in output)
        worst = figures_of.worst(figures)
        broken = figures_of.verdict(worst, cfg.precision, reference.floor)
        log.info("parity: %s", asdict(worst))
        dynamic = "min" in images.images
        return Parity(
            **fidelity.parity_fields(worst, reference.floor, broken),
            num_detections=found,
            image_hw_min=images.hw("min") if dynamic else "",
            image_hw_max=images.hw("max") if dynamic else "",
        )

    def accuracy_reference(self, built: Built) -> None:
        """With dataset=...: eager fp32 with TF32 off over the dataset, scored; before optimize,
        since backends may rework the model in place."""
        if self.cfg.dataset.name == NO_DATASET:
            return
        import torch

        from runner.accuracy import dataset, evaluate
        from runner.precision import strict_fp32

        self.dataset = dataset.open_dataset(self.cfg.dataset)

        def eager(batch):
            with torch.no_grad(), strict_fp32():
                return built.exported.decode(built.exported.module(*batch), self.cfg.batch)

        results = self._dataset_pass(eager, "reference (eager fp32 strict)")
        self.reference_scores = evaluate.scores(self.dataset, results)

    def _dataset_pass(self, predict, what: str) -> dict:
        from runner.accuracy import evaluate
        from runner.run import inputs

        cfg = self.cfg
        hw = (cfg.inputs.height, cfg.inputs.width)
        return evaluate.predictions(
            self.dataset,
            predict,
            cfg.model.family,
            hw,
            cfg.batch,
            inputs.to_tensor,
            self.device,
            what,
        )

    # ---- the parent's other requests ----

    def accuracy(self) -> Accuracy:
        """With dataset=...: the timed callable over the dataset, scored against the reference's
        scores on the same images (runner.accuracy.evaluate); nothing without a dataset. A
        failure of the pass is the Accuracy's `failure`: the timed rows are kept."""
        if self.dataset is None:
            return Accuracy()
        from runner.accuracy import evaluate

        started = time.perf_counter()
        try:
            results = self._dataset_pass(
                lambda batch: self.exported.decode(self._call(batch), self.cfg.batch),
                self.cfg.backend.name,
            )
            figures = evaluate.figures(
                self.dataset, evaluate.scores(self.dataset, results), self.reference_scores
            )
        except Exception as error:  # noqa: BLE001 - the row says why; the timings stand
            log.exception("accuracy pass failed")
            return Accuracy(failure=f"{type(error).__name__}: {error}")
        finally:
            self._stage("accuracy", started)
        figures["accuracy_s"] = time.perf_counter() - started
        log.info("accuracy: %s", ", ".join(f"{k} {v}" for k, v in figures.items()))
        return Accuracy(figures)

    def time_block(self, repeat: int) -> Block:
        """One timed block at every size; see the module docstring."""
        import torch

        from runner.run import timing

        cfg, cuda = self.cfg, self.device.type == "cuda"
        started = time.perf_counter()
        samples, peak = {}, None
        probes = timing.host_probe()  # the host's speed before and after the block
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
        probes += timing.host_probe()
        self._stage("timed blocks", started)
        hw = {shape: self.images.hw(shape) for shape in samples}
        return Block(samples, hw, peak, host_probe_ms=statistics.median(probes))

    def finish(self) -> Finished:
        """The profile step: the profiler pass and the backend's notes."""
        from runner.run import timing

        started = time.perf_counter()
        finished = Finished()
        if self.device.type == "cuda":
            batch = self.images.images["opt"]
            profile = timing.gpu_profile(lambda: self._call(batch), self._synchronize)
            if profile is not None:
                finished.gpu_busy_ms, finished.gpu_ops = profile.busy_ms, profile.ops
                record.write_atomic(self.out / "profile.txt", self._profile_text(profile))
        try:
            finished.call_stages_ms = self.stage_times() or {}
        except Exception:  # noqa: BLE001 - the stages are a nicety: the timed rows stand
            log.warning("stage pass failed", exc_info=True)
        notes = getattr(self.fn, "notes", None)  # a backend may report on its own work
        if callable(notes):
            finished.backend_notes = notes()
        self._stage("profile", started)
        log.info("stages (s): %s", ", ".join(f"{k} {v:.2f}" for k, v in self.stages.items()))
        finished.stages = dict(self.stages)
        return finished

    def stage_times(self) -> dict[str, float] | None:
        """ms per stage (runner.stages) of one uncaptured call at the opt size: the eager
        module with its family's stage modules marked, or the uncaptured forward a backend
        offers (`stage_call`: static_graph's rewritten forward, its stages marked in code, or
        its compiled copy that keeps them, whose first call compiles). None for compiled or
        traced code that keeps no ranges."""
        from runner import families, stages
        from runner.run import timing

        if self.fn is self.exported.module:  # the eager backend
            call = self.fn
        else:
            call = getattr(self.fn, "stage_call", None)
        if call is None:
            return None
        batch = self.images.images["opt"]
        table = families.get(self.exported.family).STAGE_MODULES
        with stages.marked(self.exported.model, table):
            found = timing.stage_profile(
                lambda: self._call_with(call, batch),
                self._synchronize,
                self.device.type,
                warm=getattr(call, "compiles", False),
            )
        if found is not None:
            shown = {k: v for k, v in found.items() if v is not None}
            log.info("stages (ms): %s", ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        return found

    def _profile_text(self, gpu) -> str:
        from runner.run import timing

        return (
            f"# GPU activity of one call at {self.images.hw('opt')} (the median of "
            f"{timing.PROFILED_CALLS} profiled calls): "
            f"{gpu.busy_ms:.3f} ms busy, {gpu.ops} kernels and copies\n{gpu.table}"
        )
