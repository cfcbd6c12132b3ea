"""One session, top to bottom: takes validated Configs that differ only in their backend, each with
its Job (its folder), returns the Rows it wrote, one result.csv per config (one row per repeat).

A session is what makes a speed-up fair: the backends of one variant, precision and input are
measured by one parent on one host, close in time. Each backend gets its own fresh spawned child
(runner.run.workers; TorchScript re-specialises and backends mutate models, so processes are never
shared). The children build, calibrate, check and optimize at the same time; then the parent
hands out timed blocks one at a time, round-robin, the order rotated every round:

    prepare (all children at once)    runner.run.measurement.Measurement.prepare
    round r = 0 .. repeats-1          A B C, then B C A, ...: one child times, the others wait
                                      on their pipe; each block is one Row (repeat r, session)
    accuracy, finish (one at a time)  with dataset=...: the accuracy pass (runner.accuracy);
                                      the profiler pass, the backend's notes

Rows of the same session and repeat were measured seconds apart, so host and GPU drift hit them
alike: the report pairs them (runner.report). A single run is a session of one backend.

Resume: a config whose folder holds measured rows (ok or parity_fail) of the same fingerprint
for every repeat, or an unsupported row, is kept. Otherwise the repeats that any member lacks
are measured again for every member, in a new session, so that each repeat stays paired;
rows of other repeats are kept, and each repeat has exactly one row. After Ctrl-C the session
says what the same command will keep and measure (resume_note).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import secrets
import statistics
import time

from runner import backends
from runner.config import Config, ConfigError, Job, is_cuda
from runner.identity import describe
from runner.run import gpus, record, steps
from runner.run.measurement import Measurement
from runner.run.member import Member, Run, member_runs
from runner.run.record import Row
from runner.run.steps import Prepared
from runner.run.workers import InlineWorker, Worker, cpu_shares

log = logging.getLogger(__name__)


__all__ = ["run", "run_group"]


def new_session() -> str:
    """A name for one parent's session: UTC start time, process id, random suffix."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{os.getpid()}-{secrets.token_hex(2)}"


def run(cfg: Config, job: Job) -> Row | list[Row | None]:
    """A single run (a session of one backend): its last Row. A job whose `members` the
    sweeper set is a session of those backends: one Row (or None, refused) per member."""
    if job.members:
        return run_group(member_runs(job))
    return run_group([(cfg, job)])[0]


# ---- the session ----- -------------------------------------------------------------------------


def run_group(runs: list[Run | None]) -> list[Row | None]:
    """Measure the (Config, Job) pairs (None: refused, passed through) as one session; see the
    module docstring. Returns, per config, its last row (or its unsupported / error row)."""
    members = [Member(*pair) if pair is not None else None for pair in runs]
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
            raise KeyboardInterrupt(resume_note([(m.cfg, m.job) for m in present])) from None
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


def resume_note(runs: list[Run]) -> str:
    """What the same command does with the folders of these runs as they are now (after
    Ctrl-C): the repeats it keeps and those it measures, decided as _session will decide it."""
    repeats = runs[0][0].bench.repeats
    where = runs[0][1].output_dir if len(runs) == 1 else "their folders"
    each = "" if len(runs) == 1 else " of every backend of the session"
    every = "the one repeat" if repeats == 1 else f"all {repeats} repeats"
    if any(job.redo for _, job in runs):
        return f"redo=true: it measures {every}{each} again, in {where}"
    fresh = [Member(cfg, job) for cfg, job in runs]
    for member in fresh:
        member.read_kept()
    todo = set().union(*(member.missing() for member in fresh))
    kept = [repeat for repeat in range(repeats) if repeat not in todo]
    if not todo:
        return f"it keeps {every}{each}, in {where}"
    if not kept:
        return f"nothing measured here is kept; it measures {every}{each}, in {where}"
    return (
        f"it keeps {_listed(kept)} of {repeats}{each} (in {where}) and measures "
        f"{_listed(sorted(todo))}"
    )


def _listed(repeats: list[int]) -> str:
    """The repeats as a phrase: repeat 3, repeats 0, 1."""
    numbers = ", ".join(str(repeat) for repeat in repeats)
    return f"repeat{'s' if len(repeats) > 1 else ''} {numbers}"


def _session(members: list[Member]) -> None:
    redo = any(m.job.redo for m in members)
    for member in members:
        if not redo:
            member.read_kept()
    candidates = []
    for member in members:
        absent = backends.missing(member.cfg.backend.name)
        if absent:  # nothing to measure: say so now instead of building the model first
            member.end(Prepared("unsupported", absent))
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
        if first.bench.isolate and is_cuda(first.device):
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
            child_env = {**env, **backends.environment(cfg.backend.name)}
            member.worker = Worker(Measurement, (cfg, member.out), env=child_env, cpus=cpus)
        else:
            member.worker = InlineWorker(Measurement, (cfg, member.out))
        member.worker.send("prepare")  # the children build and optimize at the same time
    for member in list(active):
        try:
            member.prepared = member.worker.receive(timeout)
            if not member.prepared.measured:
                member.end(member.prepared, gpu)
                active.remove(member)
        except Exception as failure:  # noqa: BLE001 - ChildFailed, or a bug: a row either way
            member.fail(failure, gpu)
            active.remove(member)
    prepared = time.monotonic()
    rounds = 0  # rounds in which some member timed a block
    for turn, repeat in enumerate(todo):
        if not active:
            break
        rounds += 1
        order = active[turn % len(active) :] + active[: turn % len(active)]
        for member in order:
            try:
                block = member.worker.request("time_block", repeat, timeout_s=timeout)
                block.timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                )
                member.add_block(repeat, block, session)
                member.write()
            except Exception as failure:  # noqa: BLE001 - as above
                member.fail(failure, gpu)
                active.remove(member)
    timed = time.monotonic()
    for member in list(active):
        stage = "accuracy"
        try:
            accuracy = member.worker.request("accuracy", timeout_s=timeout)
            stage = "finish"
            finished = member.worker.request("finish", timeout_s=timeout)
            for repeat, row in member.new.items():
                member.new[repeat] = steps.row(
                    dataclasses.asdict(row), finished.fields(), accuracy.fields(row)
                )
            member.write()
        except Exception as failure:  # noqa: BLE001 - as above; the timed rows stand
            member.fail_after_timing(stage, failure)
            active.remove(member)
            continue
        member.close()
        log.info("stages of %s (s): %s", member.cfg.backend.name, _stages_text(finished.stages))
        _log_result(member)
    if not rounds:  # every member ended before timing (an error or unsupported row)
        log.info(
            "session %s: prepare %.1f s; nothing timed: every backend ended before its blocks",
            session,
            prepared - started,
        )
        return
    log.info(
        "session %s: prepare %.1f s, %d timed rounds %.1f s, finish %.1f s",
        session,
        prepared - started,
        rounds,
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
