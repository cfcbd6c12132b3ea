"""static_graph's meta-architectures beyond detectors: ProposalNetwork (RPN only), SemanticSegmentor
and Panoptic FPN (runner/backends/static_graph/detector.py: ProposalHead, SemanticHead,
PanopticHead; semantic.py; postprocess.sem_seg_postprocess).

What is checked: the Outputs contract's fields (outputs.Fields: the optional `sem_seg`, and
answers that are proposals or no detections at all) slice into the eager module's flat form; the
new pure-torch parts against detectron2's own functions, traced by Dynamo as one graph without a
data-dependent scalar; and each model from its zoo config, small, on the CPU at fp32, against
eager through the runner's own parity: the zoo walk's session (scripts/zoo_coverage.py:
walk_one) and the backend called directly at a size the backbone pads, with and without
post-processing. Panoptic FPN's panoptic segments are made after the call from the decoded
answer (runner.families.detectron2._combine), for eager and static_graph alike.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from runner import backends
from runner.run import measurement, parity
from tests.helpers import CUDA_MISSING, backend_and_eager, trace_sync_free
from tests.test_zoo import load_script

CPU = torch.device("cpu")
RPN = "COCO-Detection/rpn_R_50_FPN_1x.yaml"
SEMANTIC = "Misc/semantic_R_50_FPN_1x.yaml"
PANOPTIC = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"


# ---- the contract (no detectron2) ----------------------------------------------------------


def test_fields_slice_proposals_semantic_and_panoptic_answers_as_eager_flattens_them():
    """Proposals leave boxes and scores (no classes: ProposalNetwork has none), a semantic
    segmentor its whole sem_seg map per image and no detections (D = 0), Panoptic FPN its
    instances and then sem_seg (detectron2's names sorted: pred_masks before sem_seg)."""
    from runner.backends.static_graph.outputs import FIELDS, Fields, slice_detections

    n, d, c, h, w = 2, 5, 3, 8, 10
    boxes, scores, classes = torch.rand(n, d, 4), torch.rand(n, d), torch.randint(0, 4, (n, d))
    counts, exact = torch.tensor([4, 2]), torch.ones(n, dtype=torch.bool)
    masks, sem_seg = torch.rand(n, d, 1, 6, 6), torch.rand(n, c, h, w)

    proposals = Fields(answers="proposals")
    assert proposals.names == FIELDS and proposals.per_image() == ("boxes", "scores")
    flat = slice_detections((boxes, scores, classes, counts, exact), [4, 2], proposals)
    assert len(flat) == 2 * 2
    for i, count in enumerate([4, 2]):
        assert torch.equal(flat[2 * i], boxes[i, :count])
        assert torch.equal(flat[2 * i + 1], scores[i, :count])

    semantic = Fields(("sem_seg",), answers="sem_seg")
    assert semantic.names == (*FIELDS, "sem_seg") and semantic.per_image() == ("sem_seg",)
    empty = (torch.zeros(n, 0, 4), torch.zeros(n, 0), torch.zeros(n, 0).long())
    outputs = (*empty, torch.zeros(n).long(), exact, sem_seg)
    flat = slice_detections(outputs, [0, 0], semantic)
    assert len(flat) == 2 and all(torch.equal(flat[i], sem_seg[i]) for i in range(n))

    panoptic = Fields(("masks", "sem_seg"))
    assert panoptic.per_image() == ("boxes", "scores", "classes", "masks", "sem_seg")
    flat = slice_detections(
        (boxes, scores, classes, counts, exact, masks, sem_seg), [4, 2], panoptic
    )
    assert len(flat) == 2 * 5
    for i, count in enumerate([4, 2]):
        want = [boxes[i, :count], scores[i, :count], classes[i, :count], masks[i, :count]]
        assert all(torch.equal(a, b) for a, b in zip(flat[5 * i : 5 * i + 4], want, strict=True))
        assert torch.equal(flat[5 * i + 4], sem_seg[i])  # whole: one map per image

    with pytest.raises(ValueError, match="whole groups"):
        Fields(("sem_seg", "masks"))  # OPTIONAL's order: masks first
    with pytest.raises(ValueError, match="answers"):
        Fields(answers="panoptic")


def test_without_fields_a_detectors_tuple_is_told_by_its_length_and_a_sem_seg_one_is_refused():
    """Contract version 1 told a detector's optional fields by their count; it still does, for
    tuples whose extra fields are per slot. A tuple with a sem_seg map has as many tensors as
    one with masks (or keypoints): told by count it would be sliced wrong, so it is refused."""
    from runner.backends.static_graph.outputs import Fields, guess_fields, slice_detections

    n, d = 1, 3
    head = (torch.rand(n, d, 4), torch.rand(n, d), torch.zeros(n, d).long(), torch.tensor([2]))
    head += (torch.ones(n, dtype=torch.bool),)
    masks, sem_seg = torch.rand(n, d, 1, 4, 4), torch.rand(n, 7, 16, 16)
    heatmaps, points = torch.rand(n, d, 2, 5, 5), torch.rand(n, d, 2, 3)
    assert guess_fields(head) == Fields()
    assert guess_fields((*head, masks)) == Fields(("masks",))
    assert guess_fields((*head, heatmaps, points)) == Fields(("keypoint_heatmaps", "keypoints"))
    assert len(slice_detections((*head, masks), [2])) == 4
    semantic = (*(t[:, :0] for t in head[:3]), torch.tensor([0]), head[4], sem_seg)
    panoptic = (*head, masks, sem_seg)
    for outputs in (semantic, panoptic, (*head, masks, masks, masks, masks)):
        with pytest.raises(ValueError, match="give"):
            slice_detections(outputs, [2])
    answered = slice_detections(panoptic, [2], Fields(("masks", "sem_seg")))
    assert len(answered) == 5 and torch.equal(answered[-1], sem_seg[0])


def test_a_packages_metadata_names_its_fields_and_older_packages_answered_instances():
    from runner.backends.aot_package import build
    from runner.backends.static_graph.outputs import Fields

    images = (torch.zeros(3, 16, 24),)
    for fields in (Fields(), Fields(("masks", "sem_seg")), Fields(answers="proposals")):
        meta = build.metadata(fields, images, {})
        assert Fields.of_metadata(meta) == fields
    older = {"d2bench.outputs": "boxes,scores,classes,counts,exact,masks"}  # no d2bench.answers
    assert Fields.of_metadata(older) == Fields(("masks",))
    with pytest.raises(ValueError, match="does not start"):
        Fields.of_metadata({"d2bench.outputs": "sem_seg"})


class _Declared(torch.nn.Module):
    """Slots with or without sem_seg, declaring the given Fields."""

    def __init__(self, fields, with_sem_seg: bool):
        super().__init__()
        self.fields = fields
        self.with_sem_seg = with_sem_seg

    def forward(self, *images):
        from runner.backends.static_graph.slots import no_detections

        slots = no_detections(len(images), images[0].device)
        if self.with_sem_seg:
            slots.sem_seg = torch.stack(images)[:, :2]
        return slots


def test_outputs_refuse_slots_that_are_not_what_the_detector_declares():
    """A field the detector has but did not declare would be sliced away in silence, one it
    declared but lacks would shift every later field: both are refused when the forward runs
    (a Python check of what was built: no tensor is read)."""
    from runner.backends.static_graph.outputs import Fields, Outputs

    image = torch.rand(3, 8, 8)
    semantic = Fields(("sem_seg",), answers="sem_seg")
    answer = Outputs(_Declared(semantic, True), None)(image)
    assert len(answer) == 6 and answer[3].tolist() == [0] and answer[5].shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="have sem_seg"):
        Outputs(_Declared(Fields(), True), None)(image)
    with pytest.raises(ValueError, match="lack sem_seg"):
        Outputs(_Declared(semantic, False), None)(image)


# ---- the new parts against detectron2's ----------------------------------------------------


@pytest.mark.detectron2
@pytest.mark.parametrize("output_size", [(50, 90), (100, 181)])
def test_sem_seg_postprocess_is_detectron2s_for_a_batch(output_size):
    """The batched crop-and-resize against detectron2's per-image sem_seg_postprocess, on logits
    at a padded size: at the image's own size (the run's case) and at another one."""
    from detectron2.modeling.postprocessing import sem_seg_postprocess as reference

    from runner.backends.static_graph.postprocess import sem_seg_postprocess

    logits = torch.randn(2, 5, 64, 96, generator=torch.Generator().manual_seed(0))
    got = sem_seg_postprocess(logits, (50, 90), *output_size)
    assert got.shape == (2, 5, *output_size)
    for i in range(2):
        torch.testing.assert_close(got[i], reference(logits[i], (50, 90), *output_size))


@pytest.mark.detectron2
def test_the_semantic_head_is_detectron2s_inference_and_traces_as_one_graph():
    """fpn_logits against SemSegFPNHead's own forward at inference (the zoo's config, random
    weights), and with sem_seg_postprocess traced by Dynamo as one graph (fullgraph) with no
    `.item()` or other data-dependent scalar: nothing of it needs the host."""
    from detectron2 import model_zoo
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.meta_arch.semantic_seg import build_sem_seg_head

    from runner.backends.static_graph.postprocess import sem_seg_postprocess
    from runner.backends.static_graph.semantic import fpn_logits

    cfg = model_zoo.get_config(SEMANTIC)
    levels = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
    torch.manual_seed(0)
    head = build_sem_seg_head(cfg, levels).eval()
    features = {
        name: torch.randn(2, 256, 128 // s.stride, 160 // s.stride) for name, s in levels.items()
    }
    with torch.no_grad():
        want, _ = head(features)
        got = fpn_logits(head, features)
    assert got.shape == (2, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 128, 160)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    traced = trace_sync_free(
        lambda f: sem_seg_postprocess(fpn_logits(head, f), (120, 150), 120, 150), features
    )
    torch.testing.assert_close(traced, want[:, :, :120, :150], rtol=1e-5, atol=1e-5)


@pytest.mark.detectron2
def test_a_semantic_head_no_table_names_is_unsupported_naming_it():
    from detectron2 import model_zoo
    from detectron2.modeling import build_model
    from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

    from runner.backends.static_graph.detector import Budgets, StaticDetector

    cfg = model_zoo.get_config(SEMANTIC)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    assert StaticDetector(model, True, Budgets()).fields.answers == "sem_seg"

    class MyHead(SemSegFPNHead):
        pass

    model.sem_seg_head.__class__ = MyHead
    with pytest.raises(backends.Unsupported, match="semantic head MyHead is not rewritten"):
        StaticDetector(model, True, Budgets())


# ---- whole models against eager -------------------------------------------------------------


def _walk_args(folder) -> argparse.Namespace:
    """scripts/zoo_coverage.py's defaults: 128 x 160, 100 RPN proposals, in this process."""
    return argparse.Namespace(height=128, width=160, proposals=100, isolate=False, folder=folder)


@pytest.mark.detectron2
@pytest.mark.parametrize("arch", [RPN, SEMANTIC, PANOPTIC])
def test_the_zoo_walk_runs_each_model_under_static_graph_with_parity(
    arch, tmp_path, restore_logging
):
    """One config of each meta-architecture through the zoo walk's session (build, calibrate,
    reference, optimize, parity, one timed call): static_graph's row is ok with parity, answered
    by the rewrite itself, and its figures are eager's to fp32 rounding."""
    script = load_script()
    eager, static = script.walk_one(arch, _walk_args(tmp_path), "pytest")
    assert eager.status == "ok", eager.error
    assert static.status == "ok" and static.parity_pass is True, static.error
    assert "fallback_calls=0/" in static.backend_notes, static.backend_notes
    assert not static.parity_unchecked, static.parity_unchecked
    if arch != SEMANTIC:  # proposals, instances
        assert static.num_detections == static.num_detections_ref > 0
        assert static.parity_match_f1 == 1.0 and static.parity_box_iou > 0.999
        assert static.parity_score_max_diff < 1e-4
    if arch != RPN:  # sem_seg
        assert static.parity_sem_seg_agreement == 1.0
        assert static.parity_sem_seg_prob_max_diff < 1e-4
    if arch == PANOPTIC:
        assert static.parity_mask_iou > 0.99
        assert static.parity_panoptic_match_f1 == 1.0
        assert static.parity_panoptic_class_agreement == 1.0


def _zoo_config(make_config, arch: str, *changes: str):
    """The zoo walk's config of `arch` (scripts/zoo_coverage.py: overrides) for static_graph,
    with `changes` in place of the walk's own values of those keys."""
    keys = {change.split("=", 1)[0] for change in changes}
    overrides = load_script().overrides(arch, _walk_args("unused"))
    kept = [o for o in overrides if o.split("=", 1)[0] not in keys]
    return make_config(*kept, *changes, "backend=static_graph")


def _built(make_config, arch: str, postprocess: bool):
    """The zoo walk's config of `arch` at 120 x 152, a size the FPN backbone pads to
    128 x 160; built and calibrated as a run builds it."""
    cfg = _zoo_config(
        make_config,
        arch,
        "inputs.height=120",
        "inputs.width=152",
        f"model.postprocess={str(postprocess).lower()}",
    )
    return cfg, measurement.build(cfg, CPU)


@pytest.mark.detectron2
@pytest.mark.parametrize(
    "arch, postprocess",
    [(RPN, False), (SEMANTIC, False), (SEMANTIC, True), (PANOPTIC, False), (PANOPTIC, True)],
)
def test_the_rewrite_answers_as_eager_at_a_padded_size(make_config, arch, postprocess):
    """The backend against the eager module on one image the backbone pads: without
    post-processing sem_seg stays at the padded size (as eager's head answers), with it it is
    cropped and resized to the image; proposals and instances are eager's in the same order;
    Panoptic FPN's panoptic segments, made after the call, are eager's pixel for pixel."""
    cfg, (exported, images, _) = _built(make_config, arch, postprocess)
    assert cfg.backend.name == "static_graph"
    reference, output, fn = backend_and_eager(cfg, exported, images)
    assert "fallback_calls=0/1" in fn.notes(), fn.notes()
    figures = parity.compare(reference, output, cfg.bench.match_iou)
    assert parity.verdict(figures, cfg.precision) == [] and not figures.unchecked, figures
    (ref,), (out,) = reference, output
    assert ref.instances == out.instances == (arch != SEMANTIC)
    if ref.instances:
        assert len(ref) > 0 and figures.match_f1 == 1.0, figures
        assert torch.equal(ref.classes, out.classes)
        torch.testing.assert_close(out.scores, ref.scores, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.boxes, ref.boxes, rtol=1e-4, atol=1e-3)
    if arch == RPN:
        assert ref.sem_seg is None and out.sem_seg is None
        return
    size = (120, 152) if postprocess else (128, 160)
    assert ref.sem_seg.shape[-2:] == out.sem_seg.shape[-2:] == size
    assert len(ref.sem_seg.argmax(dim=0).unique()) > 1, "one label everywhere proves little"
    torch.testing.assert_close(out.sem_seg, ref.sem_seg, rtol=1e-4, atol=1e-4)
    if arch == PANOPTIC and postprocess:
        assert len(ref.panoptic.ids) > 1, "no segments: the combination proves nothing"
        assert torch.equal(ref.panoptic.segments, out.panoptic.segments)
        assert torch.equal(ref.panoptic.categories, out.panoptic.categories)
        assert torch.equal(ref.panoptic.isthing, out.panoptic.isthing)
    elif arch == PANOPTIC:
        assert ref.panoptic is None and out.panoptic is None  # no pasted masks, no segments


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("arch", [RPN, SEMANTIC, PANOPTIC])
def test_gpu_forward_has_no_host_sync_and_replays_the_same(make_config, arch):
    """On a GPU: the rewritten forward with CUDA's sync debug mode set to error, then captured
    as one CUDA graph and replayed, answering as eager does (test_static_graph's check)."""
    if not torch.cuda.is_available():
        pytest.skip(CUDA_MISSING)
    from tests.test_static_graph import sync_free_and_replayed

    cfg = _zoo_config(make_config, arch, "device=cuda")
    reference, first, replayed, _ = sync_free_and_replayed(cfg)
    again = parity.compare(first, replayed, cfg.bench.match_iou)
    assert parity.verdict(again, cfg.precision) == [], again
    figures = parity.compare(reference, replayed, cfg.bench.match_iou)
    assert parity.verdict(figures, cfg.precision) == [], figures


@pytest.mark.detectron2
@pytest.mark.parametrize("arch", [RPN, SEMANTIC, PANOPTIC])
def test_the_whole_forward_exports_with_fixed_shapes_and_no_data_dependent_op(make_config, arch):
    """The CPU's witness of sync-free and fixed-shape: torch.export (as the package backend
    exports it) of the whole rewritten forward at the run's size holds no `.item()`, `nonzero`
    or other op whose result's shape or value the host must read, every output's shape is a
    plain number, and the exported program answers as the forward does."""
    from runner.backends.static_graph import rewrite

    cfg = _zoo_config(make_config, arch)
    exported, images, _ = measurement.build(cfg, CPU)
    opt = images.images["opt"]
    options = backends.validate_options("static_graph", cfg.backend.options)
    outputs, _ = rewrite(exported, cfg.precision, options)
    with torch.no_grad():
        want = outputs(*opt)
        program = torch.export.export(outputs, tuple(opt), strict=False)
        got = program.module()(*opt)
    ops = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    forbidden = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "aten.item")
    assert ops and not [op for op in ops if any(word in op for word in forbidden)], ops
    assert len(got) == len(outputs.fields.names) == len(want)
    for name, a, b in zip(outputs.fields.names, want, got, strict=True):
        assert all(isinstance(size, int) for size in b.shape), (name, b.shape)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
