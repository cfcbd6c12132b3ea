"""`python -m runner.package out=FILE.pt2 [group=option ...] [key=value ...]`: make the package
that `backend=aot_package` times, for a user to keep.

Takes the same settings as a run (model, weights, arch options, precision, batch, input size,
the rewrite's options as `backend.options.*`), composed by Hydra from conf/ the same way, and
writes one AOTInductor package (runner/backends/aot_package/build.py) of static_graph's
rewritten detector at that input size and batch. It loads the package back, checks that it
answers as the in-process forward does, and prints the file and its size, what loading it
needs, and a short program that loads it and runs one image.

Exit codes: 0 written; 2 for input no package can be made of (one line, `invalid
configuration: ...`, nothing written): a bad key or option, no `out=`, an output path that
cannot be written, a model that is not a detectron2 detector, shapes=dynamic; 1 when making
it failed (the reason on the last line).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

log = logging.getLogger("runner.package")

USAGE = "python -m runner.package out=FILE.pt2 [model=...] [precision=...] [key=value ...]"


class Refused(ValueError):
    """Input no package can be made of; the message says what to change."""


def split_out(argv: list[str]) -> tuple[Path, list[str]]:
    """(the out= path, the other arguments)."""
    outs = [a for a in argv if a.startswith("out=")]
    if len(outs) != 1:
        raise Refused(f"give the package's path once, as out=FILE.pt2 (usage: {USAGE})")
    out = outs[0].split("=", 1)[1]
    return Path(out), [a for a in argv if not a.startswith("out=")]


def check_out(out: Path) -> None:
    """Refuse a path the package cannot be written to, before anything is built."""
    if out.is_dir():
        raise Refused(f"out={out}: is a folder; name the file, e.g. out={out / 'model.pt2'}")
    if out.suffix != ".pt2":
        raise Refused(f"out={out}: a package file ends in .pt2")
    existing = out.parent
    while not existing.exists():  # the folders out's parent still needs are made when writing
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise Refused(f"out={out}: cannot write there ({existing} is not a writable folder)")
    if out.exists() and not os.access(out, os.W_OK):
        raise Refused(f"out={out}: the file exists and cannot be overwritten")


def compose(overrides: list[str], output_dir: Path):
    """The run's Config for these overrides with backend=aot_package, validated, with the
    package's own requirements checked (ConfigError on bad input); `preflight` then asks what
    this machine can run."""
    import hydra

    from runner import backends, families
    from runner.config import CONF_DIR, ConfigError, check_command_line, register_schema, to_config

    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "backend" or key.startswith("backend_file"):
            raise ConfigError(
                f"{override}: a package is always static_graph's rewrite (backend=aot_package); "
                "set its options as backend.options.NAME=VALUE"
            )
        if key == "hydra" or key.startswith("hydra."):
            raise ConfigError(f"{override}: no Hydra settings here, the package is one file")
    overrides = ["backend=aot_package", *overrides]
    check_command_line(overrides)
    register_schema()
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = hydra.compose("config", overrides=[*overrides, f"output_dir={output_dir}"])
    cfg = to_config(composed)
    if not families.get(cfg.model.family).REWRITABLE:
        raise ConfigError(
            f"model={cfg.model.name}: packages are made of static_graph's rewrite of a "
            "detectron2 detector; this model is not one"
        )
    if cfg.shapes.dynamic:
        raise ConfigError(
            "shapes=dynamic: a package serves one input size and batch; make one per size "
            "with inputs.height=H inputs.width=W"
        )
    try:
        backends.validate_options(cfg.backend.name, cfg.backend.options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return cfg


def preflight(cfg) -> None:
    """What this machine cannot make the package of (device, detectron2, files): ConfigError."""
    from runner import preflight as checks

    checks.check(cfg)


def make(cfg, out: Path, command: str) -> dict:
    """Build the model as a run does, rewrite it, package it into `out`, load it back and
    compare; returns what the CLI prints."""
    import torch

    from runner.backends import static_graph, validate_options
    from runner.backends.aot_package import agreement, build
    from runner.config import parse_device
    from runner.precision import strict_if_asked
    from runner.run.measurement import build as build_run

    kind, index = parse_device(cfg.device)
    device = torch.device(kind, index or 0) if kind == "cuda" else torch.device(kind)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    options = validate_options("aot_package", cfg.backend.options)
    with strict_if_asked(cfg.precision):
        built = build_run(cfg, device)
        outputs, notes = static_graph.rewrite(built.exported, cfg.precision, options)
        images = built.images.images["opt"]
        with torch.no_grad():
            expected = outputs(*images)  # the in-process answer; makes the anchors too
        meta = {
            "model": cfg.model.name,
            "arch": cfg.model.arch,
            "weights": built.weights,
            "precision": cfg.precision.name,
            "postprocess": cfg.postprocess,
            "rewrite": "; ".join(notes),
            "command": command,
        }
        package = build.build(outputs, images, meta, path=out)
    loaded, load_s, isa_probe_s = build.load(out, device)
    with torch.no_grad():
        agrees = agreement(expected, loaded(*images), outputs.fields)
    return {
        "package": package,
        "load_s": load_s,
        "isa_probe_s": isa_probe_s,
        "agreement": agrees,
        "metadata": loaded.get_metadata(),
    }


def report(out: Path, made: dict) -> str:
    from runner.backends.aot_package import build

    package, meta = made["package"], made["metadata"]
    needs = "\n".join(f"  - {line}" for line in build.requirements(meta))
    return (
        f"package: {out} ({package.size_mb:.1f} MB; export {package.export_s:.1f} s, "
        f"compile {package.compile_s:.1f} s, load {made['load_s']:.2f} s, after Inductor's CPU "
        f"ISA probe {made['isa_probe_s']:.1f} s, once per process; "
        f"libstdc++ {package.runtime})\n"
        f"inputs: {meta['d2bench.inputs']}; outputs: {meta['d2bench.outputs']} "
        "(docs/packages.md says what each holds)\n"
        f"checked: the loaded package against the in-process forward: {made['agreement']}\n"
        f"loading it needs:\n{needs}\n\n"
        f"{build.snippet(out, meta)}\n"
    )


def main(argv: list[str]) -> int:
    # this process loads the package it makes: no pool of compile workers from the start
    # (runner/backends/aot_package/compile_worker.py: the compile has a process of its own)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    from runner.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    command = shlex.join(["python", "-m", "runner.package", *argv])
    try:
        out, overrides = split_out(argv)
        check_out(out)
        cfg = compose(overrides, out.parent.resolve())
        preflight(cfg)
    except (Refused, ConfigError) as error:
        sys.stderr.write(f"invalid configuration: {error}\n")
        return 2
    try:
        made = make(cfg, out, command)
    except Exception as error:  # noqa: BLE001 - the reason, on one line, after the traceback
        log.exception("making the package failed")
        sys.stderr.write(f"package not made: {type(error).__name__}: {error}\n")
        return 1
    sys.stdout.write(report(out, made))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
