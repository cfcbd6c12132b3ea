"""detectron2 models: each of the seed's seven variants (conf/sweep/seed.yaml) built, calibrated,
exported and run by the TorchScript backend on the CPU, answering as eager fp32 does; and one
real run on a GPU. Skipped, with the reason, where detectron2 (or CUDA) is missing."""

from __future__ import annotations

import pytest
import torch
import yaml

from runner import backends
from runner.run import export, inputs, measurement, models, parity
from runner.run.bench import run
from tests.helpers import CONF, assert_logit_layers_exist, option_files, seed_variants

pytestmark = pytest.mark.detectron2

CPU = torch.device("cpu")
SMALL = ("device=cpu", "inputs.height=192", "inputs.width=256")
# Fewer proposals than the zoo's 1000 keep the CPU time of the R-CNN heads (C4's res5 runs once
# per proposal) to seconds; the exported graphs are the same.
FEWER_PROPOSALS = {"MODEL.RPN.POST_NMS_TOPK_TEST": 200}


def variant_overrides(name: str) -> list[str]:
    point = seed_variants()[name]
    values = {k: str(v).lower() if isinstance(v, bool) else v for k, v in point.items()}
    return [f"{k}={v}" for k, v in values.items()] + [f"variant={name}"]


def backend_against_eager(make_config, name: str, backend: str, **options):
    """A seed variant, small, on the CPU at fp32: (reference, output, figures, optimized fn) of
    `backend` (with `options` over its file's) against the eager module on the opt input."""
    cfg = make_config(*variant_overrides(name), *SMALL, f"backend={backend}")
    cfg.model.arch_options = {**cfg.model.arch_options, **FEWER_PROPOSALS}
    exported, images, _ = measurement.build(cfg, CPU)
    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        checked = backends.validate_options(backend, {**cfg.backend.options, **options})
        fn = backends.get(backend)(exported, images, cfg.precision, checked)
        output = exported.decode(fn(*opt), cfg.batch)
    assert len(reference) == cfg.batch
    assert all(len(d) > 0 for d in reference), "no detections: parity would prove nothing"
    return reference, output, parity.compare(reference, output, cfg.bench.match_iou), fn


def assert_same_detections(reference, figures) -> None:
    assert figures.match_f1 == 1.0, figures
    assert figures.box_iou > 0.999 and figures.score_max_diff < 1e-4, figures
    if reference[0].masks is not None:
        assert figures.mask_iou > 0.99, figures


@pytest.mark.slow
@pytest.mark.parametrize("name", list(seed_variants()))
def test_seed_variant_torchscript_matches_eager_fp32(make_config, name):
    reference, _, figures, fn = backend_against_eager(make_config, name, "torchscript")
    assert isinstance(fn, torch.nn.Module)
    assert_same_detections(reference, figures)


def test_scripting_cascade_rcnn_is_unsupported(make_config):
    cfg = make_config("model=cascade_rcnn", "export=script", *SMALL)
    model, _ = models.build(cfg.model, CPU, cfg.seed)
    images = inputs.make(cfg, CPU)
    with pytest.raises(backends.Unsupported) as reason:
        export.wrap(model, cfg.model, "script", cfg.postprocess, images.images["opt"])
    assert "export=script" in str(reason.value) and "trace" in str(reason.value)


@pytest.mark.parametrize(
    "path",
    [p for p in option_files("model") if yaml.safe_load(p.read_text())["family"] == "detectron2"],
    ids=lambda p: p.stem,
)
def test_logit_layers_name_layers_of_the_model(path):
    """A misspelt logit layer would be skipped silently (no calibration, no warning)."""
    assert assert_logit_layers_exist(path) == "random(seed=0)"


def test_model_files_exist_for_every_seed_variant():
    for name, point in seed_variants().items():
        assert (CONF / "model" / f"{point['model']}.yaml").exists(), name


@pytest.mark.gpu
@pytest.mark.slow
def test_a_real_run_on_the_gpu(make_run, tmp_path):
    out = tmp_path / "gpu"
    row = run(
        *make_run(
            "model=mask_rcnn_fpn",
            "device=cuda",
            "bench.warmup=5",
            "bench.iters=10",
            f"output_dir={out}",
        )
    )
    assert row.status == "ok", row.error
    assert row.parity_pass is True
    assert row.gpu_busy_ms is not None and row.gpu_busy_ms > 0
    assert row.peak_mem_mb is not None and row.peak_mem_mb > 0
    assert row.gpu_name and row.gpu_index != ""
    assert 0 < row.gpu_busy_ms <= row.latency_ms_median * 1.5


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "torchscript"])
def test_fp16_on_the_gpu_has_one_owner_and_the_eager_floor(make_run, tmp_path, backend):
    """TorchScript applies fp16 itself (owns_precision: the harness does not wrap it in autocast
    a second time); eager is wrapped by the harness. Either way the detections are eager fp16's:
    parity passes against the strict reference with the fp16 floor, and the call is faster on
    the GPU than at fp32 would be (GPU busy under the fp32 row of the same model, below)."""
    rows = {}
    for precision in ("fp16", "fp32"):
        rows[precision] = run(
            *make_run(
                "model=mask_rcnn_fpn",
                "device=cuda",
                f"backend={backend}",
                f"precision={precision}",
                "bench.warmup=5",
                "bench.iters=10",
                "bench.repeats=1",
                f"output_dir={tmp_path / precision}",
            )
        )
    for row in rows.values():
        assert row.status == "ok" and row.parity_pass is True, row.error
    assert rows["fp16"].parity_floor_match_f1 is not None  # compared with eager fp16's floor
    assert rows["fp16"].gpu_busy_ms < rows["fp32"].gpu_busy_ms  # fp16 kernels really ran
