"""The report's accuracy columns: rows of runs with a dataset get Box / Mask AP in points with
the difference from the reference, a Dataset line and a legend entry (golden file); tables of
rows without a dataset are as before (the other report goldens), and rows of two datasets are
two tables, never merged."""

from __future__ import annotations

from runner.report.identity import identity_of
from runner.report.tables import ap_text, tables
from tests.test_report import check_golden, measured

DATASET = "generated:val.json@sha256:0123456789ab"
WEIGHTS = "file:mask_rcnn_fpn.pth@sha256:abcdef012345 trained(iters=1500, batch=16)"


def with_accuracy(row_args, box, box_vs, mask, mask_vs, **fields):
    fields = {"accuracy_dataset": DATASET, **fields}
    return measured(
        *row_args,
        weights=WEIGHTS,
        accuracy_images=300,
        accuracy_box_ap=box,
        accuracy_box_ap50=min(1.0, box + 0.2),
        accuracy_box_ap_vs_ref=box_vs,
        accuracy_mask_ap=mask,
        accuracy_mask_ap50=min(1.0, mask + 0.2),
        accuracy_mask_ap_vs_ref=mask_vs,
        accuracy_s=12.5,
        **fields,
    )


def accuracy_rows():
    return [
        with_accuracy(("MaskRCNNFPN", "fp32", "eager", 40.0), 0.61234, 0.0, 0.5871, 0.0),
        with_accuracy(("MaskRCNNFPN", "fp32", "torchscript", 25.0), 0.61234, 0.0, 0.5871, 0.0),
        with_accuracy(("MaskRCNNFPN", "fp16", "eager", 30.0), 0.6119, -0.00044, 0.5868, -0.0003),
        with_accuracy(
            ("MaskRCNNFPN", "fp16", "torchscript", 16.0), 0.6021, -0.01024, 0.5702, -0.0169
        ),
    ]


def test_accuracy_tables_match_golden():
    check_golden("tables_accuracy.md", tables(accuracy_rows(), results_csv="results/acc.csv"))


def test_ap_is_shown_in_points_with_the_difference_from_the_reference():
    row = accuracy_rows()[3]
    assert ap_text(row, "box") == "60.2 (-1.02)"
    assert ap_text(row, "mask") == "57.0 (-1.69)"
    assert ap_text(row, "keypoint") == "—"


def test_rows_without_a_dataset_have_no_accuracy_columns():
    plain = tables([measured("MaskRCNNFPN", "fp32", "eager", 40.0)])
    assert "AP (vs ref)" not in plain and "Box AP" not in plain and "Dataset" not in plain


def test_rows_of_two_datasets_are_two_identities_and_two_tables():
    first = accuracy_rows()[0]
    other = with_accuracy(
        ("MaskRCNNFPN", "fp32", "eager", 41.0),
        0.4,
        0.0,
        0.3,
        0.0,
        accuracy_dataset="coco:instances_val2017.json@sha256:fedcba987654",
    )
    assert identity_of(first) != identity_of(other)
    text = tables([first, other])
    assert sum(line.startswith("| Backend |") for line in text.splitlines()) == 2
    assert "accuracy_dataset coco:instances_val2017.json@sha256:fedcba987654" in text
