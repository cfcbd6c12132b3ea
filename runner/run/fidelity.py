"""Fidelity: what a run's answers are held to. Takes the exported model, its inputs and the run's
precision; returns the reference detections, the floor, and the parity fields of the row.

  reference  eager fp32 under runner.precision.strict_fp32() (TF32 off for matmuls and
             convolutions), at every input size, whatever the run's precision: one exact answer
             that every precision and backend is compared with.
  floor      eager PyTorch at the run's precision (its autocast and TF32 flags) against that
             reference, where the precision alone moves the answers: fp16 / bf16 (autocast), and
             fp32 with PyTorch's default flags on CUDA (TF32 convolutions). None for a strict
             precision (the reference's own settings) and for fp32 on the CPU, where TF32 does
             not exist: the floor would be the reference itself, so it is not computed there.
             Measured on `precision.floor_draws` inputs: the run's own and jittered copies of
             it (every pixel moved by up to JITTER_GREY_LEVELS, seeded by the run's seed), each
             against its own strict reference; the floor is the worst figure over them. The
             jitter changes no answer a model should care about but re-draws which rounding
             lands where, so the floor measures how far the precision can move the answers
             rather than one toss of it (runner.run.parity.limits: why that matters).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from runner.config import PrecisionConfig
from runner.run import parity

log = logging.getLogger("runner.run.bench")

REFERENCE = "eager fp32 strict (TF32 off)"  # the row's parity_reference


def needs_floor(precision: PrecisionConfig, device_type: str) -> bool:
    """Whether eager at `precision` on `device_type` can differ from the strict reference."""
    if precision.autocast:
        return True
    return not precision.strict and device_type == "cuda"


def eager_detections(exported, images, batch: int) -> dict:
    """Detections of the eager module at every input size (under the caller's flags)."""
    import torch

    with torch.no_grad():
        return {
            shape: exported.decode(exported.module(*images.images[shape]), batch)
            for shape in images.shapes
        }


JITTER_GREY_LEVELS = 0.5  # a floor draw moves each pixel by up to this, of 0..255


def jittered(images, draw: int, seed: int, family: str):
    """The input set with every pixel moved by a uniform draw in +-JITTER_GREY_LEVELS (in the
    family's pixel range), from a generator seeded by (seed, draw); draw 0 is the input."""
    import torch

    from runner import families
    from runner.run.inputs import InputSet

    if draw == 0:
        return images
    amplitude = JITTER_GREY_LEVELS * families.get(family).PIXELS[1] / 255.0
    generator = torch.Generator().manual_seed(seed * 1_000_003 + draw)
    moved = {}
    for shape, batch in images.images.items():
        moved[shape] = tuple(
            image + ((torch.rand(image.shape, generator=generator) * 2 - 1) * amplitude).to(image)
            for image in batch
        )
    return InputSet(moved)


def reference_and_floor(
    exported, images, batch: int, precision: PrecisionConfig, device, match_iou, seed: int = 0
):
    """(reference detections by input size, floor Figures or None); see the module docstring."""
    import dataclasses

    import torch

    from runner.precision import at_precision, strict_fp32

    with strict_fp32():
        reference = eager_detections(exported, images, batch)
    if not needs_floor(precision, torch.device(device).type):
        return reference, None
    draws = []
    for draw in range(precision.floor_draws):
        inputs = jittered(images, draw, seed, exported.family)
        if draw == 0:
            strict = reference
        else:
            with strict_fp32():
                strict = eager_detections(exported, inputs, batch)
        with at_precision(precision, device):
            at_run_precision = eager_detections(exported, inputs, batch)
        draws.append(
            parity.worst(
                [
                    parity.compare(strict[shape], at_run_precision[shape], match_iou)
                    for shape in images.shapes
                ]
            )
        )
    floor = dataclasses.replace(parity.worst(draws), draws=len(draws))
    log.info(
        "floor (eager %s vs %s, worst of %d inputs): %s; match_f1 per input: %s",
        precision.name,
        REFERENCE,
        len(draws),
        asdict(floor),
        " ".join("-" if d.match_f1 is None else f"{d.match_f1:.3f}" for d in draws),
    )
    return reference, floor


def parity_fields(worst: parity.Figures, floor: parity.Figures | None, broken: list[str]) -> dict:
    """Row fields of a parity check: figures, floor, unchecked fields, reference, outcome."""
    fields = {f"parity_{name}": getattr(worst, name) for name in parity.FIGURES}
    if floor is not None:
        fields.update({f"parity_floor_{name}": getattr(floor, name) for name in parity.FIGURES})
        fields["parity_floor_draws"] = floor.draws
    if worst.unchecked:
        log.warning(
            "parity: no figure compares %s; the row names them (parity_unchecked)",
            ", ".join(worst.unchecked),
        )
    fields.update(
        parity_unchecked=", ".join(worst.unchecked),
        parity_reference=REFERENCE,
        parity_pass=not broken,
        num_detections_ref=worst.num_reference,
        status="ok" if not broken else "parity_fail",
        error="" if not broken else "parity: " + "; ".join(broken),
    )
    return fields
