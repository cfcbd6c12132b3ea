"""The run pipeline: one session, from validated Configs (each with its Job: folder, command) to
the rows in result.csv.

bench        the session: members built at once, timed blocks in turns, a row per repeat
member       one member as the parent sees it: folder, kept rows, worker, its rows' identity
workers      the fresh spawned child per member: requests, timeouts, signals (call: one request)
measurement  the child's steps: environment -> build -> reference -> flops -> optimize
             -> warm-up -> parity; timed blocks; the accuracy pass (runner.accuracy);
             profile and the stage pass (runner.stages: one uncaptured call by stage)
steps        the typed values the steps hand on, and the Row they make (always a row)
models, inputs, export   the build step (the family's own parts: runner.families)
fidelity, parity         the reference and the parity step
timing       synchronized timed calls, summaries, the GPU profile, the stage profile
flops        FLOPs of one call (FlopCounterMode), the GPUs' dense peaks, achieved TFLOP/s
record       the Row, its CSV, the environment it states
gpus, progress           a GPU per session (lock files); one progress line

Imports run one way: runner.run uses runner.families and runner.backends, and what all three
share sits below them (runner.config, runner.identity, runner.precision, runner.exported,
runner.stages, runner.library_noise); nothing there imports runner.run (tests/test_layering.py).
"""
