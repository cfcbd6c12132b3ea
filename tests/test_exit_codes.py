"""The README's rule, through `python -m runner` in real processes: input no run can use gives
exit code 2, one line naming what is wrong and the choices, no traceback, and nothing written:
Hydra's own composition errors (unknown group option, unknown key, wrong type), a sweep whose
every job is refused, and a refused single run with Hydra's default output folder."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import (
    REPO,
    SMALL_CPU_RUN,
    clean_environment,
    option_files,
    run_runner,
)


def lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def assert_refused_in_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    output = lines(done)
    assert done.returncode == 2, output
    assert len(output) == 1, "\n".join(output)
    assert "invalid configuration: " in output[0], output[0]
    for text in expected:
        assert text in output[0], output[0]
    return output[0]


def choices(group: str) -> list[str]:
    return [path.stem for path in option_files(group)]


HYDRA_MISTAKES = [
    (["model=nope"], ["model=nope", *choices("model")]),
    (["precision=fp8"], ["precision=fp8", *choices("precision")]),
    (["shapes=dynamc"], ["shapes=dynamc", *choices("shapes")]),
    (["sweep=nope"], ["sweep=nope", *choices("sweep")]),
    (["--multirun", "backend=eager,nope"], ["backend=nope", *choices("backend")]),
    (["hydra/launcher=nope"], ["hydra/launcher=nope", "basic", "local_gpus", "slurm"]),
    (["foo=1"], ["foo: no such key", "batch", "bench", "model"]),
    (["bench.nope=2"], ["bench.nope: no such key", "warmup", "iters"]),
    (["batch=abc"], ["batch=abc", "could not be converted to Integer"]),
    (["backend=eager,torchscript"], ["backend=eager,torchscript", "--multirun"]),
    (["model.arch_options.MODEL.X=1"], ["+model.arch_options.MODEL.X="]),
]


@pytest.mark.parametrize(
    "arguments, expected", HYDRA_MISTAKES, ids=[" ".join(a) for a, _ in HYDRA_MISTAKES]
)
def test_composition_errors_are_one_line_with_the_choices_and_exit_2(tmp_path, arguments, expected):
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    done = run_runner(
        *arguments, f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={sweep_dir}", timeout=120
    )
    assert_refused_in_one_line(done, *expected)
    assert not run_dir.exists() and not sweep_dir.exists()


EVERY_LAYER = [  # (arguments, what the line says): one refusal from each place that refuses
    (["model=nope"], "model=nope: no such option"),  # the command line, before Hydra
    (["model=nope", "--cfg", "job"], "model=nope: no such option"),  # was Hydra's own, exit 1
    ([*SMALL_CPU_RUN, "batch=0"], "batch=0; must be >= 1"),  # a single run's validation
    ([*SMALL_CPU_RUN, "inputs.image=/no/such.jpg"], "inputs.image=/no/such.jpg: no such file"),
    (  # a backend's options that pass alone but not together
        [*SMALL_CPU_RUN, "backend=static_graph", "backend.options.compile_stages=true"],
        "options.compile_stages=true",
    ),
    (["sweep=seed", "variant=Nope", "device=cpu"], "unknown variant(s) ['Nope']"),  # the sweep
    (["--multirun", *SMALL_CPU_RUN, "batch=0", "seed=0,1"], "(all 2 jobs of the sweep)"),
]


@pytest.mark.parametrize("arguments, says", EVERY_LAYER, ids=[" ".join(a) for a, _ in EVERY_LAYER])
def test_every_refusal_is_one_line_in_one_format(tmp_path, arguments, says):
    """Refusals came as a bare `invalid configuration: ...`, as `[time][runner][ERROR] - ...`,
    as `[time][HYDRA] ...` or as Hydra's many lines; now each is that one bare line."""
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    folders = [f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={sweep_dir}"]
    # argparse takes no more overrides after `--cfg job`: there the folders go first
    argv = [*folders, *arguments] if "--cfg" in arguments else [*arguments, *folders]
    done = run_runner(*argv, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "", done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("invalid configuration: ") and says in line, line
    assert not run_dir.exists() and not sweep_dir.exists()


def test_cfg_job_still_prints_the_composed_config():
    done = run_runner("model=tv_fasterrcnn_mobilenet", "batch=2", "--cfg", "job", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "name: tv_fasterrcnn_mobilenet" in done.stdout and "batch: 2" in done.stdout


def test_a_sweep_whose_every_job_is_refused_says_it_once_and_writes_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner(
        "--multirun",
        *SMALL_CPU_RUN,
        "inputs.image=/no/such/photo.jpg",
        "backend=eager,torchscript",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        timeout=180,
    )
    line = assert_refused_in_one_line(done, "inputs.image=/no/such/photo.jpg: no such file")
    assert "(all 4 jobs of the sweep)" in line
    assert not sweep.exists(), "a refused sweep wrote its folder (multirun.yaml)"


def test_the_seed_sweep_without_detectron2_is_one_line_with_the_install_commands(tmp_path):
    """As on a machine without detectron2: the module is hidden from the runner's process."""
    hide = (
        "import runpy, sys; sys.modules['detectron2'] = None; "
        "sys.argv = ['runner', *sys.argv[1:]]; runpy.run_module('runner', run_name='__main__')"
    )
    sweep = tmp_path / "seed"
    done = subprocess.run(
        [sys.executable, "-c", hide, "sweep=seed", "device=cpu", f"hydra.sweep.dir={sweep}"],
        cwd=REPO,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert output.count("the detectron2 models need detectron2") == 1, output
    assert "(all 28 jobs of the sweep)" in output
    assert "pip install" in output and "Traceback" not in output
    assert not sweep.exists()


def test_a_refused_single_run_leaves_no_empty_outputs_folder(tmp_path):
    """Hydra makes outputs/runs/<time>_.../ before the job is refused; all of it goes."""
    done = subprocess.run(
        [sys.executable, "-m", "runner", *SMALL_CPU_RUN, "batch=0"],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "batch=0" in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == [], sorted(tmp_path.rglob("*"))


@pytest.mark.detectron2
def test_a_misspelt_detectron2_key_is_refused_before_any_child(tmp_path):
    run = tmp_path / "run"
    done = run_runner(
        "model=retinanet",
        "device=cpu",
        "+model.arch_options.MODEL.RETINANET.TOPK_CANDIDATES_TSET=10",
        f"hydra.run.dir={run}",
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Non-existent key: MODEL.RETINANET.TOPK_CANDIDATES_TSET" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not run.exists()


TORCHVISION_KEYWORDS_UNUSED = [
    (
        "+model.arch_options.box_detectionz_per_img=50",
        ["box_detectionz_per_img=50", "nearest: box_detections_per_img"],
    ),
    ("+model.arch_options.MODEL.FOO=1", ["MODEL={'FOO': 1}"]),
]


@pytest.mark.parametrize(
    "option, expected", TORCHVISION_KEYWORDS_UNUSED, ids=[o for o, _ in TORCHVISION_KEYWORDS_UNUSED]
)
def test_a_torchvision_keyword_the_builder_does_not_use_is_refused_before_the_run(
    tmp_path, option, expected
):
    """torchvision's builders swallow unknown keywords (FasterRCNN passes **kwargs on to its
    transform, which ignores them): a misspelt one ran a whole benchmark and its row recorded
    it as if it applied. Now it is one line, exit 2, nothing written, as for detectron2."""
    run = tmp_path / "run"
    done = run_runner(*SMALL_CPU_RUN, option, f"hydra.run.dir={run}", timeout=180)
    assert_refused_in_one_line(
        done, "fasterrcnn_mobilenet_v3_large_320_fpn uses no keyword", *expected
    )
    assert not run.exists()


def test_torchvision_keywords_the_builder_uses_pass_preflight(make_config):
    from runner import preflight

    preflight.check(
        make_config(
            "model=tv_fasterrcnn_mobilenet",
            "device=cpu",
            "+model.arch_options.box_detections_per_img=50",
            "+model.arch_options.min_size=300",
        )
    )
    preflight.check(make_config("model=tv_maskrcnn", "device=cpu"))  # its file's min/max_size


@pytest.mark.detectron2
@pytest.mark.parametrize(
    "arch, nearest",
    [
        ("COCO-Detection/nope.yaml", "COCO-Detection/"),
        ("COCO-Detection/retinanet_R_50_FPN_1x.yml", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"),
    ],
)
def test_a_model_arch_not_in_the_model_zoo_is_refused_naming_the_nearest(tmp_path, arch, nearest):
    """It was exit 1, an error row and a run folder ("not available in Model Zoo!")."""
    run = tmp_path / "run"
    done = run_runner(
        "model=retinanet", "device=cpu", f"model.arch={arch}", f"hydra.run.dir={run}", timeout=180
    )
    line = assert_refused_in_one_line(done, f"model.arch={arch}: no such config", "nearest: ")
    assert nearest in line.split("nearest: ", 1)[1], line
    assert not run.exists()


def test_the_detectron2_install_commands_printed_are_the_readmes():
    """What a run prints when detectron2 is missing is what the README says to run."""
    from runner.families.detectron2 import INSTALL as DETECTRON2_INSTALL

    readme = (REPO / "README.md").read_text()
    block = readme.split("**detectron2** is on no package registry", 1)[1]
    block = block.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    for command in commands:
        assert command in DETECTRON2_INSTALL, command
