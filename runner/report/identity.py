"""What a row is, as the report sees it: the fields that say what was measured (runner.identity's
columns, read when a key is made), the machine it ran on, and the names the report gives it
(variant title, backend label, the table it belongs to). Takes Rows, returns keys and labels;
reads nothing."""

from __future__ import annotations

from runner import identity
from runner.run.record import Row

# the identity columns --compare does not pair rows of two machines by: what the model computes
# is compared, not the protocol nor the weights' label
NOT_COMPARED = ("weights", "warmup", "iters", "rewarm", "timing_options", "accuracy_dataset")
# what else a table holds fixed: input photo, arch options, thresholds, seed, protocol, dataset
SETUP_FIELDS = (
    "image",
    "arch_options",
    "thresholds",
    "seed",
    "warmup",
    "iters",
    "rewarm",
    "accuracy_dataset",
)
REFERENCE_BACKEND = "eager"  # the baseline every speed-up is measured against


def machine_of(row: Row) -> str:
    """The GPU's name, or the CPU's where the row ran without a GPU."""
    if row.gpu_name:
        return row.gpu_name
    return f"CPU {row.cpu_model}" if row.cpu_model else "unknown machine"


def compare_fields() -> tuple[str, ...]:
    """What --compare pairs rows of two machines by: the identity without NOT_COMPARED."""
    return tuple(name for name in identity.identity_columns() if name not in NOT_COMPARED)


def pair_fields() -> tuple[str, ...]:
    """What pairs a row with its baseline: the identity without the backend."""
    backend = ("backend", "backend_options")
    return tuple(name for name in identity.identity_columns() if name not in backend)


def identity_of(row: Row) -> tuple:
    """What a row measured: its identity columns and the machine. Rows that differ here never
    merge."""
    return (*(getattr(row, name) for name in identity.identity_columns()), machine_of(row))


def pair_key(row: Row) -> tuple:
    """What --compare pairs rows of two files by: compare_fields (no machine, no protocol)."""
    return tuple(getattr(row, name) for name in compare_fields())


def is_baseline(row: Row) -> bool:
    """A row of the reference backend with its file's options: what speed-ups divide."""
    return row.backend == REFERENCE_BACKEND and not row.backend_options


def backend_label(row: Row) -> str:
    """The backend, with the options it ran with where they differ from its conf file's."""
    return f"{row.backend} [{row.backend_options}]" if row.backend_options else row.backend


def title_of(row: Row) -> str:
    """The variant's name, or one built from what defines it: "mask_rcnn_fpn (trace, batch 2)"."""
    if row.variant:
        return row.variant
    details = [row.export] if row.export else []
    details.append(f"batch {row.batch}")
    if row.postprocess:
        details.append("postprocess")
    return f"{row.model} ({', '.join(details)})"


def describe(row: Row) -> str:
    return (
        f"{title_of(row)} {row.precision} {backend_label(row)} {row.shapes} {row.image_hw} "
        f"on {machine_of(row)}"
    )


def setup_of(row: Row) -> tuple:
    """The SETUP_FIELDS of the row."""
    return tuple(getattr(row, name) for name in SETUP_FIELDS)


def table_key(row: Row) -> tuple:
    """Rows that share one table: machine, variant, shapes, input size and setup_of."""
    return (machine_of(row), title_of(row), row.shapes, row.image_hw, setup_of(row))
