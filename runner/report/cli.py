"""The report's command line (`python -m runner.report`): merges the rows of many runs into one
results CSV, Markdown tables, the generated blocks of docs/results.md and the README, and plots.

Takes result.csv files: folders are searched recursively for `result.csv`, and CSV files named on
the command line are read as they are (a results CSV written by this tool is one). Returns:

- the merged rows, one per repeat (identical copies dropped, each logged), refused when they
  come from more than one machine unless mixed machines are allowed;
- the results CSV (`--out`), sorted in the seed's variant order, then precision, then backend;
- Markdown: a provenance header and one table per variant, with a legend (`tables`);
- the full results block of a page (`--readme`, docs/results.md) between
  `<!-- d2bench:results:begin -->` and `<!-- d2bench:results:end -->`;
- the README's headline (`--headline`): per variant and precision, eager against the best
  backend, between `<!-- d2bench:headline:begin -->` and `<!-- d2bench:headline:end -->`;
- PNG plots: speed-up over eager, and latency against image size for dynamic-shape rows.

    python -m runner.report outputs/ results/old.csv --out results/h200_seed.csv \\
        --readme docs/results.md --headline README.md --plots results/plots

Compare mode sets two results files (or run folders) side by side, to compare machines:

    python -m runner.report --compare results/h200_seed.csv results/a100_seed.csv \\
        [--out-md results/h200_vs_a100.md]

Each side is read as above (skips and duplicates reported; one machine per file unless mixed
machines are allowed), and rows are paired by identity without the machine. Markdown (stdout, or
`--out-md`): each side's file, machine, software and protocol, then one table per variant with
both medians, B/A latency, GPU busy and parity of each side, and the rows only in A and only in B.
The two modes' arguments cannot be mixed.

Agreement mode sets two or more sweeps of the same configurations side by side, to see how far
their reported medians are apart (the reproducibility figure; runner.report.agreement):

    python -m runner.report --agreement results/h200_protocol_g.csv results/h200_protocol_h.csv \\
        [--out-md results/h200_protocol_agreement.md]

Files that cannot be read are skipped with their reason and reported; the exit code is 0 then.
It is 2 for usage errors, refused mixed machines, a page without its markers, and no rows at all
(in compare mode: no rows in either file).
"""

from __future__ import annotations

import argparse
import collections
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.report import performance
from runner.report.agreement import agreement
from runner.report.compare import compare_side, comparison, pair_rows, read_side
from runner.report.markdown import counted
from runner.report.plots import plot
from runner.report.readme import HEADLINE, read_readme, relative_link, update_readme
from runner.report.rows import (
    collect,
    drop_duplicates,
    require_one_machine,
    seed_variant_order,
    sort_rows,
    write,
)
from runner.report.tables import headline, tables
from runner.run import record
from runner.run.record import Row

log = logging.getLogger(__name__)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Merge result.csv rows into a results CSV, Markdown tables and plots "
        "(INPUTS... --out FILE), or compare two results files side by side "
        "(--compare A.csv B.csv [--out-md FILE]).",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="merge mode: folders (searched for result.csv) or results CSV files",
    )
    parser.add_argument(
        "--out", type=Path, help="merge mode: results CSV to write (without it: print the tables)"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help="merge mode: Markdown page (docs/results.md) whose results block to rewrite",
    )
    parser.add_argument(
        "--headline",
        type=Path,
        help="merge mode: README whose headline block to rewrite (needs --readme: it links the "
        "full tables)",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        help="merge mode: folder for speedup.png, where_time_goes.png, latency_vs_size.png, "
        "stages.png, throughput.png",
    )
    parser.add_argument(
        "--targets",
        type=Path,
        help="merge mode: YAML of speed-up, latency and optimize-time targets to check "
        "(results/targets.yaml)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="compare mode: two results files (or run folders), rows paired by identity "
        "without the machine; Markdown to stdout, or to --out-md",
    )
    parser.add_argument(
        "--agreement",
        nargs="+",
        type=Path,
        metavar="SWEEP",
        help="agreement mode: two or more results files (or run folders) of the same "
        "configurations; each one's medians and how far apart they are",
    )
    parser.add_argument(
        "--out-md", type=Path, help="compare and agreement modes: write the Markdown here"
    )
    parser.add_argument(
        "--allow-mixed-gpus",
        action="store_true",
        help="accept rows from several machines (in compare mode: within one file): "
        "one section per machine",
    )
    args = parser.parse_args(argv)
    check_mode(parser, args)
    return args


def check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2, with the usage) arguments of the two modes mixed, or a mode incomplete."""
    if args.compare and args.agreement:
        parser.error("--compare and --agreement are two modes: give one")
    if args.agreement and len(args.agreement) < 2:
        parser.error("--agreement needs two or more sweeps")
    if args.compare or args.agreement:
        mode = "--compare" if args.compare else "--agreement"
        merge_only = [
            label
            for label, given in (
                (f"inputs ({' '.join(map(str, args.inputs))})", args.inputs),
                ("--out", args.out),
                ("--readme", args.readme),
                ("--headline", args.headline),
                ("--plots", args.plots),
                ("--targets", args.targets),
            )
            if given
        ]
        if merge_only:
            parser.error(
                f"{mode} cannot be mixed with merge mode's {', '.join(merge_only)}: compare "
                "with --compare A.csv B.csv [--out-md FILE], or merge with INPUTS... --out FILE"
            )
        return
    if args.out_md is not None:
        parser.error(
            "--out-md belongs to compare and agreement modes: --compare A.csv B.csv --out-md FILE"
        )
    if not args.inputs:
        parser.error(
            "the following arguments are required: inputs "
            "(or --compare A.csv B.csv to compare two results files)"
        )
    if args.readme is not None and args.out is None:
        parser.error("--readme needs --out: the page's tables name the results CSV they show")
    if args.headline is not None and args.readme is None:
        parser.error("--headline needs --readme: the headline links the full tables")
    if args.headline is not None and args.headline.resolve() == args.readme.resolve():
        parser.error("--headline and --readme name one file: the headline links the tables' page")


def summary(
    rows: Sequence[Row], dropped: Sequence[Row], skipped: Sequence[tuple[str, str]], out: Path
) -> str:
    """One line: rows merged, duplicates dropped, files skipped by reason (paths logged above)."""
    text = (
        f"merged {counted(len(rows), 'row')} into {out}; "
        f"dropped {len(dropped)} identical cop{'y' if len(dropped) == 1 else 'ies'}; "
        f"skipped {counted(len(skipped), 'file')}"
    )
    reasons = collections.Counter(reason for _, reason in skipped)
    if not reasons:
        return text
    return (
        text + " — " + "; ".join(f"{counted(n, 'file')}: {reason}" for reason, n in reasons.items())
    )


def report(args: argparse.Namespace, command: str) -> int:
    """Collect, merge, check, then write the CSV, plots and pages (or print the tables)."""
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        log.error("no such input: %s", ", ".join(missing))
        return 2
    found, skipped = collect(args.inputs)
    rows, dropped = drop_duplicates(found)
    if not rows:
        log.error("no rows to report (%d files skipped)", len(skipped))
        return 2
    try:
        require_one_machine(rows, args.allow_mixed_gpus)
        seed_variant_order()  # the tables' order: refused here, before anything is written
        readme_text = read_readme(args.readme) if args.readme else None
        headline_text = read_readme(args.headline, HEADLINE) if args.headline else None
        targets = performance.load_targets(args.targets) if args.targets else None
    except ValueError as error:
        log.error("%s", error)
        return 2
    rows = write(rows, args.out) if args.out else sort_rows(rows)  # no --out: print only
    plots = plot(rows, args.plots, targets) if args.plots else {}
    links = {name: relative_link(path, args.readme) for name, path in plots.items()}
    links = links if args.readme else {}
    csv_link = relative_link(args.out, args.readme) if args.out else ""
    block = tables(rows, csv_link, links, targets)
    if readme_text is None:
        sys.stdout.write(block)
    else:
        record.write_atomic(args.readme, update_readme(readme_text, block, command))
    if headline_text is not None:
        links = {name: relative_link(path, args.headline) for name, path in plots.items()}
        short = headline(rows, relative_link(args.readme, args.headline), links)
        page = update_readme(headline_text, short, command, HEADLINE)
        record.write_atomic(args.headline, page)
    log.info("%s", summary(rows, dropped, skipped, args.out or "the tables above"))
    return 0


def compare(args: argparse.Namespace) -> int:
    """Read both files, then print the comparison or write it to --out-md."""
    sides: list[list[Row]] = []
    failed = False
    for path in args.compare:
        try:
            sides.append(compare_side(path, args.allow_mixed_gpus))
        except ValueError as error:
            log.error("%s", error)
            failed = True
    if failed:
        return 2
    a_path, b_path = args.compare
    text = comparison(sides[0], sides[1], str(a_path), str(b_path))
    if args.out_md is None:
        sys.stdout.write(text)
    else:
        record.write_atomic(args.out_md, text)
    pairs, only_a, only_b = pair_rows(*sides)
    log.info(
        "compared %s with %s: %s, %d only in A, %d only in B%s",
        a_path,
        b_path,
        counted(len(pairs), "pair"),
        len(only_a),
        len(only_b),
        f"; wrote {args.out_md}" if args.out_md else "",
    )
    return 0


def agree(args: argparse.Namespace) -> int:
    """Read every sweep (each checked for one machine), then print or write the agreement."""
    sweeps: list[list[Row]] = []
    for path in args.agreement:
        try:
            sweeps.append(read_side(path, args.allow_mixed_gpus))
        except ValueError as error:
            log.error("%s", error)
            return 2
    text = agreement(sweeps, [str(path) for path in args.agreement])
    if args.out_md is None:
        sys.stdout.write(text)
    else:
        record.write_atomic(args.out_md, text)
        log.info("wrote %s", args.out_md)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")
    args = parse_arguments(argv)
    if args.compare:
        return compare(args)
    if args.agreement:
        return agree(args)
    return report(args, shlex.join(["python", "-m", "runner.report", *argv]))
