"""Fidelity: strict fp32 (TF32 off) as a context that restores what it found, the reference that
always runs under it, the floor of precision=fp32 on CUDA (eager with PyTorch's defaults against
that reference), the row fields of a parity check; and, on a GPU, TF32 really off during the
reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runner.exported import Exported, Layout
from runner.precision import at_precision, strict_fp32, tf32_state
from runner.run import fidelity, parity
from runner.run.inputs import InputSet

STRICT = {"matmul": False, "cudnn": False, "float32_matmul_precision": "highest"}


@pytest.fixture
def loose_flags():
    """TF32 allowed everywhere (as a user may set it), restored to PyTorch's state afterwards."""
    with strict_fp32():  # its exit restores the state found here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        yield


def test_strict_fp32_turns_tf32_off_and_restores_what_it_found(loose_flags):
    before = tf32_state()
    assert before == {"matmul": True, "cudnn": True, "float32_matmul_precision": "high"}
    with strict_fp32():
        assert tf32_state() == STRICT
        with strict_fp32():  # nested: still strict, and the outer one still restores
            assert tf32_state() == STRICT
        assert tf32_state() == STRICT
    assert tf32_state() == before


def test_after_strict_fp32_the_legacy_cudnn_flag_reads_again():
    """torch.export reads torch.backends.cudnn.allow_tf32; torch refuses that read once the
    new API has written conv and RNN after the legacy setter, unless they are set together."""
    found = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision)
    with strict_fp32():
        pass
    assert isinstance(torch.backends.cudnn.allow_tf32, bool)  # raised before the fix
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision) == (
        found
    )


def test_strict_fp32_restores_after_an_exception_and_a_mixed_cudnn_state(loose_flags):
    if not hasattr(torch.backends.cudnn, "conv"):
        pytest.skip("this torch has no fp32_precision API")
    torch.backends.cudnn.conv.fp32_precision = "ieee"  # conv and RNN set apart (new API)
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="inside"):
        with strict_fp32():
            assert tf32_state() == STRICT
            raise RuntimeError("inside")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == "tf32"
    assert tf32_state()["matmul"] is True


def test_only_a_strict_precision_changes_the_flags_of_its_calls(make_config, loose_flags):
    before = tf32_state()
    with at_precision(make_config("precision=fp32").precision, "cpu"):
        assert tf32_state() == before
    strict = make_config("precision=fp32_strict").precision
    assert strict.strict and not strict.autocast and strict.dtype == "float32"
    with at_precision(strict, "cpu"):
        assert tf32_state() == STRICT
    assert tf32_state() == before


@pytest.mark.parametrize(
    "precision, device, floor",
    [
        ("fp32", "cuda", True),  # TF32 convolutions by default: a floor against the reference
        ("fp32", "cpu", False),  # no TF32 on the CPU: the floor would be the reference itself
        ("fp32_strict", "cuda", False),  # the reference's own flags
        ("fp16", "cpu", True),
        ("bf16", "cuda", True),
    ],
)
def test_which_runs_have_a_floor(make_config, precision, device, floor):
    assert fidelity.needs_floor(make_config(f"precision={precision}").precision, device) is floor


class FlagRecorder(nn.Module):
    """A tiny real detector (one conv, three boxes per image) that records the TF32 flags it
    ran under."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.flags: list[dict] = []

    def forward(self, *images):
        self.flags.append(tf32_state())
        flat = []
        for image in images:
            score = self.conv(image[None]).flatten()[:3]
            boxes = torch.stack([score, score, score + 1, score + 1], dim=1) * 0 + torch.tensor(
                [[0.0, 0, 5, 5], [10, 10, 20, 20], [0, 10, 5, 20]], device=image.device
            )
            flat += [boxes, score.sigmoid(), torch.zeros(3, dtype=torch.int64)]
        return tuple(flat)


def _recorder(device="cpu"):
    torch.manual_seed(0)
    module = FlagRecorder().eval().to(device)
    images = (torch.rand(3, 16, 16, device=device),)
    exported = Exported(
        module=module,
        model=module,
        method="trace",
        example=images,
        make_torchscript=lambda: None,
        layout=Layout("torchvision", ("boxes", "scores", "labels")),
    )
    return module, exported, InputSet({"opt": images})


def test_the_floor_of_fp32_on_cuda_is_eager_with_defaults_against_the_strict_reference(
    make_config, loose_flags
):
    """The CUDA path's plumbing on the CPU: the device is only asked for its type, the model
    runs where its tensors are. Reference under strict flags, floor under the user's flags."""
    module, exported, images = _recorder()
    fp32 = make_config("precision=fp32").precision
    reference, floor = fidelity.reference_and_floor(exported, images, 1, fp32, "cuda", 0.7)
    loose = {"matmul": True, "cudnn": True, "float32_matmul_precision": "high"}
    assert module.flags == [STRICT, loose] * fp32.floor_draws  # each draw: reference, then floor
    assert len(reference["opt"][0]) == 3
    assert floor is not None and floor.match_f1 == 1.0 and floor.score_max_diff == 0.0
    fields = fidelity.parity_fields(floor, floor, parity.verdict(floor, fp32, floor))
    assert fields["parity_floor_match_f1"] == 1.0
    assert fields["parity_floor_score_max_diff"] == 0.0
    assert fields["parity_floor_draws"] == fp32.floor_draws == 5
    assert fields["parity_reference"] == fidelity.REFERENCE
    assert fields["status"] == "ok" and fields["parity_unchecked"] == ""


def test_floor_draws_are_the_input_and_jittered_copies_by_seed():
    """Draw 0 is the input itself; the others move each pixel by at most half a grey level
    (of the family's range), differently per draw, the same for the same seed."""
    _, exported, images = _recorder()
    assert fidelity.jittered(images, 0, seed=0, family="torchvision") is images
    first = fidelity.jittered(images, 1, seed=0, family="torchvision").images["opt"][0]
    moved = (first - images.images["opt"][0]).abs()
    assert 0 < moved.max() <= fidelity.JITTER_GREY_LEVELS / 255.0
    again = fidelity.jittered(images, 1, seed=0, family="torchvision").images["opt"][0]
    second = fidelity.jittered(images, 2, seed=0, family="torchvision").images["opt"][0]
    other_seed = fidelity.jittered(images, 1, seed=1, family="torchvision").images["opt"][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, second) and not torch.equal(first, other_seed)
    bgr = fidelity.jittered(images, 1, seed=0, family="detectron2").images["opt"][0]
    assert (bgr - images.images["opt"][0]).abs().max() > 1 / 255.0  # pixels in 0..255 there


def test_no_floor_where_it_would_be_the_reference(make_config, loose_flags):
    module, exported, images = _recorder()
    for overrides, device in ((("precision=fp32",), "cpu"), (("precision=fp32_strict",), "cuda")):
        module.flags.clear()
        precision = make_config(*overrides).precision
        _, floor = fidelity.reference_and_floor(exported, images, 1, precision, device, 0.7)
        assert floor is None and module.flags == [STRICT]  # the reference only
    figures = parity.compare([], [], 0.7)
    fields = fidelity.parity_fields(figures, None, [])
    assert not any(key.startswith("parity_floor_") for key in fields)


def test_parity_fields_name_unchecked_fields_and_warn(caplog):
    figures = parity.Figures(1.0, 1.0, 0.0, None, 2, 2, 0.0, ("keypoint_heatmaps", "x"))
    with caplog.at_level("WARNING", logger="runner.run.bench"):
        fields = fidelity.parity_fields(figures, None, ["match_f1 0.5 < 0.99"])
    assert fields["parity_unchecked"] == "keypoint_heatmaps, x"
    assert fields["parity_keypoint_max_dist"] == 0.0
    assert fields["status"] == "parity_fail" and fields["error"] == "parity: match_f1 0.5 < 0.99"
    assert "keypoint_heatmaps, x" in caplog.text


@pytest.mark.gpu
def test_tf32_is_off_during_the_reference_on_cuda(make_config):
    """On a GPU: the flags the reference ran under, and that they take effect: a convolution
    and a matmul under strict_fp32 agree with float64 far closer than TF32 (10 bits) could."""
    module, exported, images = _recorder("cuda")
    fp32 = make_config("precision=fp32").precision
    _, floor = fidelity.reference_and_floor(exported, images, 1, fp32, "cuda", 0.7)
    assert module.flags[0] == STRICT and floor is not None
    assert module.flags[1]["cudnn"] is True  # PyTorch's default: TF32 convolutions

    torch.manual_seed(0)
    x = torch.randn(8, 64, 32, 32, device="cuda")
    w = torch.randn(64, 64, 3, 3, device="cuda")
    a, b = torch.randn(512, 512, device="cuda"), torch.randn(512, 512, device="cuda")

    def errors():
        conv = torch.nn.functional.conv2d(x, w, padding=1)
        exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
        mm_error = ((a @ b).double() - a.double() @ b.double()).abs().max()
        return (conv.double() - exact).abs().max().item(), mm_error.item()

    with strict_fp32():
        strict_conv, strict_mm = errors()
    with strict_fp32():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        tf32_conv, tf32_mm = errors()
    assert strict_conv < 1e-3 and strict_mm < 1e-3, (strict_conv, strict_mm)
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 exists from Ampere on
        assert tf32_conv > 10 * strict_conv and tf32_mm > 10 * strict_mm, (tf32_conv, tf32_mm)
