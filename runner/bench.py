"""One session, top to bottom: takes validated Configs that differ only in their backend, returns
the Rows it wrote, one result.csv per config (one row per repeat).

A session is what makes a speed-up fair: the backends of one variant, precision and input are
measured by one parent on one host, close in time. Each backend gets its own fresh spawned child
(runner.workers; TorchScript re-specialises and backends mutate models, so processes are never
shared). The children build, calibrate, check and optimize at the same time; then the parent
hands out timed blocks one at a time, round-robin, the order rotated every round:

    prepare (all children at once)    runner.measurement.Measurement.prepare
    round r = 0 .. repeats-1          A B C, then B C A, ...: one child times, the others wait
                                      on their pipe; each block is one Row (repeat r, session)
    finish (one child at a time)      the profiler pass, the backend's notes

Rows of the same session and repeat were measured seconds apart, so host and GPU drift hit them
alike: the report pairs them (runner.report). A single run is a session of one backend.

Resume: a config whose folder holds measured rows (ok or parity_fail) of the same fingerprint
for every repeat, or an unsupported row, is kept. Otherwise the repeats that any member lacks
are measured again for every member, in a new session, so that each repeat stays paired;
rows of other repeats are kept, and each repeat has exactly one row.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import logging
import os
import secrets
import statistics
import time
from pathlib import Path

from runner import backends, gpus, provenance, record, timing
from runner.config import Config, ConfigError, options_text
from runner.config import fingerprint as config_fingerprint
from runner.isolate import ChildFailed
from runner.measurement import Measurement, eager_detections, prepare_model
from runner.record import Row
from runner.workers import InlineWorker, Worker, cpu_shares

log = logging.getLogger(__name__)


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def arch_options_text(options: dict) -> str:
    return " ".join(f"{key}={_text(options[key])}" for key in sorted(options))


def thresholds_text(cfg: Config) -> str:
    m = cfg.model
    return f"score={m.score_thresh:g} nms={m.nms_thresh:g} detections={m.detections_per_image}"


def timing_options_text(cfg: Config) -> str:
    return f"gc={cfg.bench.gc} pin_cpus={_text(cfg.bench.pin_cpus)}"


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
        "image": cfg.inputs.image or "",
        "arch_options": arch_options_text(cfg.model.arch_options),
        "thresholds": thresholds_text(cfg),
        "seed": cfg.seed,
        "device": cfg.device,
        "warmup": cfg.bench.warmup,
        "iters": cfg.bench.iters,
        "rewarm": cfg.bench.rewarm,
        "timing_options": timing_options_text(cfg),
        "repeats": cfg.bench.repeats,
        "command": cfg.command,
        "output_dir": cfg.output_dir,
    }


def describe(cfg: Config) -> str:
    options = options_text(cfg.backend)
    backend = (
        f"backends={','.join(spec.split()[0].split('=', 1)[1] for spec in cfg.members)}"
        if cfg.members
        else f"backend={cfg.backend.name}{f'[{options}]' if options else ''}"
    )
    return (
        f"{cfg.variant or cfg.model.name} export={cfg.export} batch={cfg.batch} "
        f"precision={cfg.precision.name} {backend} shapes={cfg.shapes.name}"
    )


prepare = prepare_model  # (cfg, device) -> (Exported, InputSet, weights): tests build with it
__all__ = ["eager_detections", "prepare", "run", "run_group"]


def new_session() -> str:
    """A name for one parent's session: UTC start time, process id, random suffix."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{os.getpid()}-{secrets.token_hex(2)}"


def run(cfg: Config) -> Row | list[Row | None]:
    """A single run (a session of one backend): its last Row. A config whose `members` the
    sweeper set is a session of those backends: one Row (or None, refused) per member."""
    if cfg.members:
        return run_group(member_configs(cfg))
    return run_group([cfg])[0]


# ---- members of a sweep's session --------------------------------------------------------


def is_backend_override(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "backend" or key.startswith("backend.")


def member_configs(cfg: Config) -> list[Config | None]:
    """The Config of each member of the session the sweeper asked for (inside its Hydra job):
    the job's overrides with the backend's replaced by the member's, in the folder Hydra would
    give that job on its own. None (logged) where a member's config is refused."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from runner import preflight
    from runner.config import job_dirname, to_config

    hydra_cfg = HydraConfig.get()
    shared = [
        o
        for o in hydra_cfg.overrides.task
        if not is_backend_override(o) and o.split("=", 1)[0].lstrip("+~") != "members"
    ]
    sweep_dir = Path(hydra_cfg.runtime.output_dir)  # sweep.dir / subdir (override_dirname)
    for _ in Path(job_dirname(hydra_cfg.job.override_dirname)).parts:
        sweep_dir = sweep_dir.parent
    configs: list[Config | None] = []
    for spec in cfg.members:
        overrides = shared + spec.split()
        try:
            composed = compose("config", overrides=overrides, return_hydra_config=True)
            folder = sweep_dir / job_dirname(composed.hydra.job.override_dirname)
            with open_dict(composed):
                del composed["hydra"]
                composed.output_dir = str(folder)
                composed.command = cfg.command
                composed.members = []
            member = to_config(composed)
            preflight.check(member)
        except ConfigError as error:
            log.error("invalid configuration %s: %s", " ".join(overrides), error)
            configs.append(None)
            continue
        except Exception as error:  # noqa: BLE001 - Hydra raises many kinds for bad overrides
            log.error("invalid configuration %s: %s", " ".join(overrides), error)
            configs.append(None)
            continue
        configs.append(member)
    return configs


# ---- one member of a session -------------------------------------------------------------


class Member:
    """The parent's view of one config: its folder, kept rows, worker and new rows."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.fingerprint = config_fingerprint(cfg, provenance.code_digest())  # content
        self.kept: dict[int, Row] = {}  # measured rows of this fingerprint, by repeat
        self.kept_unsupported: Row | None = None
        self.new: dict[int, Row] = {}
        self.blocks: dict[int, dict] = {}
        self.fields: dict = {}  # from prepare, then finish
        self.final: Row | None = None  # an unsupported or error row ends the member
        self.worker = None
        self.started = time.monotonic()

    def read_kept(self) -> None:
        """Rows already in the folder that count as done for this fingerprint."""
        try:
            rows = record.read_rows(self.out / "result.csv")
        except (OSError, ValueError, csv.Error):
            return
        rows = [r for r in rows if r.fingerprint == self.fingerprint]
        if len(rows) == 1 and rows[0].status == "unsupported":
            self.kept_unsupported = rows[0]
            return
        repeats = range(self.cfg.bench.repeats)
        self.kept = {
            r.repeat: r for r in rows if r.status in record.MEASURED and r.repeat in repeats
        }

    def missing(self) -> set[int]:
        if self.kept_unsupported is not None:
            return set()
        return set(range(self.cfg.bench.repeats)) - set(self.kept)

    def end(self, fields: dict, gpu: str = "") -> Row:
        """Finish this member with one unsupported or error row (its file holds only it)."""
        if "torch_version" not in fields:  # the child never reported its environment
            fields = {**fields, **record.environment(self.cfg.device), "gpu_index": gpu}
        fields = {k: v for k, v in fields.items() if k != "stages"}
        self.final = Row(**{**identity(self.cfg), **fields, "fingerprint": self.fingerprint})
        record.write_rows(self.out / "result.csv", [self.final])
        self.close()
        log.warning(
            "run: %s in %.0f s: %s: %s",
            self.final.status,
            time.monotonic() - self.started,
            describe(self.cfg),
            (self.final.error.splitlines() or [""])[0],
        )
        return self.final

    def fail(self, failure: ChildFailed, gpu: str) -> Row:
        if failure.detail:
            (self.out / "error.txt").write_text(failure.detail)
        return self.end({"status": "error", "error": f"{failure.cause}: {failure}"}, gpu)

    def add_block(self, repeat: int, block: dict, session: str) -> None:
        samples = block["samples"]
        fields = {k: v for k, v in self.fields.items() if k != "stages"}
        fields.update(timing.summarize(samples["opt"], self.cfg.batch))
        for shape in ("min", "max"):
            if shape in samples:
                fields[f"latency_ms_median_{shape}_shape"] = timing.summarize(
                    samples[shape], self.cfg.batch
                )["latency_ms_median"]
        fields.update(
            peak_mem_mb=block["peak_mem_mb"],
            repeat=repeat,
            session=session,
            timestamp=block["timestamp"],
        )
        self.blocks[repeat] = block
        self.new[repeat] = Row(**{**identity(self.cfg), **fields, "fingerprint": self.fingerprint})

    def rows(self) -> list[Row]:
        merged = {**self.kept, **self.new}
        return [merged[r] for r in sorted(merged)]

    def write(self) -> None:
        """result.csv with one row per repeat; samples.csv with every timed call of them."""
        record.write_rows(self.out / "result.csv", self.rows())
        lines = ["repeat,shape,image_hw,call,latency_ms"]
        keep = set(self.kept) - set(self.new)
        lines += [
            line
            for line in _sample_lines(self.out / "samples.csv")
            if int(line.split(",", 1)[0]) in keep
        ]
        for repeat in sorted(self.blocks):
            block = self.blocks[repeat]
            for shape, values in block["samples"].items():
                hw = block["image_hw"][shape]
                lines += [f"{repeat},{shape},{hw},{i},{v!r}" for i, v in enumerate(values)]
        record.write_atomic(self.out / "samples.csv", "\n".join(lines) + "\n")

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    def interrupt(self) -> None:
        """Ctrl-C: kill the child now; a run that has measured nothing gets a row saying it was
        interrupted (measured repeats are in result.csv already; the same command adds the rest)."""
        if self.worker is not None and hasattr(self.worker, "kill"):
            self.worker.kill()
        if self.final is None and not self.rows():
            took = time.monotonic() - self.started
            self.end(
                {
                    "status": "error",
                    "error": f"interrupted: Ctrl-C (SIGINT) after {took:.0f} s; "
                    "child and its workers killed",
                }
            )


def _sample_lines(path: Path) -> list[str]:
    """The data lines of a samples.csv with a repeat column (older files have none: [])."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    if not lines or not lines[0].startswith("repeat,"):
        return []
    return [line for line in lines[1:] if line and line.split(",", 1)[0].isdigit()]


# ---- the session -------------------------------------------------------------------------


def run_group(cfgs: list[Config | None]) -> list[Row | None]:
    """Measure the configs (None: refused, passed through) as one session; see the module
    docstring. Returns, per config, its last row (or its unsupported / error row)."""
    members = [Member(cfg) if cfg is not None else None for cfg in cfgs]
    present = [m for m in members if m is not None]
    folders = [m.out.resolve() for m in present]
    if len(set(folders)) != len(folders):
        raise ConfigError("two configs of one session share an output folder")
    for member in present:
        member.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as locks:
        for member in sorted(present, key=lambda m: str(m.out)):
            locks.enter_context(record.locked(member.out / ".lock"))
        try:
            _session(present)
        except KeyboardInterrupt:
            for member in present:
                member.interrupt()
            raise
        finally:
            for member in present:
                member.close()
    results: list[Row | None] = []
    for member in members:
        if member is None:
            results.append(None)
        else:
            results.append(member.final or (member.rows() or [None])[-1])
    return results


def _session(members: list[Member]) -> None:
    redo = any(m.cfg.redo for m in members)
    for member in members:
        if not redo:
            member.read_kept()
    candidates = []
    for member in members:
        absent = backends.missing(member.cfg.backend.name)
        if absent:  # nothing to measure: say so now instead of building the model first
            member.end({"status": "unsupported", "error": absent})
        else:
            candidates.append(member)
    todo = sorted(set().union(*(m.missing() for m in candidates))) if candidates else []
    if not todo:
        for member in candidates:
            kept = member.kept_unsupported or member.rows()[-1]
            member.final = member.kept_unsupported
            log.info(
                "run: kept %s (%s, fingerprint %s; redo=true measures again)",
                describe(member.cfg),
                kept.status if member.kept_unsupported else f"{len(member.kept)} repeats",
                member.fingerprint,
            )
        return
    active = [m for m in candidates if m.kept_unsupported is None]
    for member in candidates:
        if member.kept_unsupported is not None:
            member.final = member.kept_unsupported
            log.info("run: kept %s (unsupported)", describe(member.cfg))
    session = new_session()
    first = active[0].cfg
    with contextlib.ExitStack() as stack:
        gpu, env = "", {}
        if first.bench.isolate and first.device.startswith("cuda"):
            gpu = stack.enter_context(gpus.claim(first.device))  # the children share one GPU
            env = {"CUDA_VISIBLE_DEVICES": gpu}
        _measure(active, todo, session, gpu, env)


def _measure(active: list[Member], todo: list[int], session: str, gpu: str, env: dict) -> None:
    first = active[0].cfg
    timeout = first.bench.timeout_s
    shares = cpu_shares(len(active)) if first.bench.pin_cpus else [None] * len(active)
    started = time.monotonic()
    log.info(
        "session %s: %d backend(s), repeats %s, on %s",
        session,
        len(active),
        todo,
        f"GPU {gpu}" if gpu else first.device,
    )
    for member, cpus in zip(active, shares, strict=True):
        cfg = member.cfg
        if cfg.bench.isolate:
            if gpu:
                cfg = dataclasses.replace(cfg, device="cuda:0")  # the child sees one GPU
            member.worker = Worker(Measurement, (cfg,), env=env, cpus=cpus)
        else:
            member.worker = InlineWorker(Measurement, (cfg,))
        member.worker.send("prepare")  # the children build and optimize at the same time
    for member in list(active):
        try:
            member.fields = member.worker.receive(timeout)
        except ChildFailed as failure:
            member.fail(failure, gpu)
            active.remove(member)
            continue
        if member.fields.get("status") not in record.MEASURED:
            member.end(member.fields, gpu)
            active.remove(member)
    prepared = time.monotonic()
    for turn, repeat in enumerate(todo):
        order = active[turn % len(active) :] + active[: turn % len(active)] if active else []
        for member in order:
            try:
                block = member.worker.request("time_block", repeat, timeout_s=timeout)
            except ChildFailed as failure:
                member.fail(failure, gpu)
                active.remove(member)
                continue
            block["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            )
            member.add_block(repeat, block, session)
            member.write()
    timed = time.monotonic()
    for member in list(active):
        try:
            finished = member.worker.request("finish", timeout_s=timeout)
        except ChildFailed as failure:
            member.fail(failure, gpu)
            active.remove(member)
            continue
        stages = finished.pop("stages", {})
        for repeat, row in member.new.items():
            member.new[repeat] = dataclasses.replace(row, **finished)
        member.write()
        member.close()
        log.info("stages of %s (s): %s", member.cfg.backend.name, _stages_text(stages))
        _log_result(member)
    log.info(
        "session %s: prepare %.1f s, %d timed rounds %.1f s, finish %.1f s",
        session,
        prepared - started,
        len(todo),
        timed - prepared,
        time.monotonic() - timed,
    )


def _stages_text(stages: dict) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items())


def _log_result(member: Member) -> None:
    rows = member.rows()
    medians = [r.latency_ms_median for r in rows]
    row = rows[-1]
    log.info(
        "run: %s in %.0f s: %s: median %.2f ms over %d repeats (%.2f-%.2f), parity %s, "
        "%s detections",
        row.status,
        time.monotonic() - member.started,
        describe(member.cfg),
        statistics.median(medians),
        len(rows),
        min(medians),
        max(medians),
        "pass" if row.parity_pass else "FAIL",
        row.num_detections,
    )
