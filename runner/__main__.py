"""`python -m runner [group=option ...] [key=value ...]`: compose the config, run, record.

Hydra composes conf/config.yaml with one file from each group; `run_job` validates it and hands
it to runner.bench.run. In a single run the exit code is 0 for ok and unsupported rows, 1 for
errors and parity failures, 2 for input no run can use. In --multirun the sweeper collects the
rows and sets the exit code once every job has run.
"""

from __future__ import annotations

import logging
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.bench import run
from runner.config import ConfigError, register_schema, to_config
from runner.record import Row

log = logging.getLogger("runner")


def command_line() -> str:
    """The command that made this row: the sweep's (set by the sweeper) or this process's."""
    import os

    return os.environ.get("D2BENCH_COMMAND") or shlex.join(["python", "-m", "runner", *sys.argv[1:]])


def run_job(cfg: DictConfig) -> Row | None:
    single = HydraConfig.get().mode == RunMode.RUN
    try:
        config = to_config(cfg)
    except ConfigError as error:
        log.error("invalid configuration: %s", error)
        if single:
            raise SystemExit(2) from None
        return None
    config.command = command_line()
    row = run(config)
    if single and row.status in ("error", "parity_fail"):
        raise SystemExit(1)
    return row


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Row | None:
    return run_job(cfg)


if __name__ == "__main__":
    register_schema()
    main()
