"""The report: merges the rows of many runs into a results CSV, Markdown tables, the generated
blocks of docs/results.md and the README, and plots, or compares two results files
(`python -m runner.report`, cli).

Data flows one way, each module one step:

    rows         read result.csv files and results CSVs; drop copies; one machine; seed order
    identity     what a row measured, and the names the report gives it
    repeats      repeats merged per identity; paired speed-ups with their intervals
    tables       Markdown: provenance, one table per variant, legend; the README's headline
    performance  where one call's time goes, and the targets (results/targets.yaml)
    kernels      the GPU work itself: ms per stage, FLOP/s against the peak, throughput by batch
    readme       a page's generated block between its markers (full results, headline)
    plots        which PNG figures, written where: speedup_plot, time_plot, size_plot draw
                 one each, kernels_plot two (stages, throughput), and return a Drawing of
                 what they drew (style: colours, sizes)
    compare      two results files side by side
    cli          the command line
"""
