"""The GPU pool (lock files hand each run a GPU of its own) and the progress lines; both work
without a GPU: the pool only locks files named after the GPUs it is told about."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from runner.run import gpus, progress


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("D2BENCH_LOCK_DIR", str(tmp_path / "locks"))


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", " 2, 7 ,")
    assert gpus.visible_gpus() == ["2", "7"]


def test_claims_hand_out_different_gpus(two_gpus, tmp_path):
    with gpus.claim("cuda") as first, gpus.claim("cuda") as second:
        assert {first, second} == {"3", "5"}
        assert (tmp_path / "locks" / f"gpu{first}.lock").exists()


def test_cuda_n_is_the_nth_visible_gpu(two_gpus):
    with gpus.claim("cuda:1") as gpu:
        assert gpu == "5"
    with pytest.raises(ValueError, match="cuda:2"):
        with gpus.claim("cuda:2"):
            pass


def test_a_claim_waits_until_a_gpu_is_free(two_gpus):
    got = []

    def third():
        with gpus.claim("cuda", poll_s=0.05) as gpu:
            got.append(gpu)

    with gpus.claim("cuda") as first:
        with gpus.claim("cuda"):
            waiter = threading.Thread(target=third)
            waiter.start()
            time.sleep(0.5)
            assert got == [], "a third run got a GPU while both were busy"
        waiter.join(5)
    assert got and got[0] != first


def test_position_in_a_sweep(monkeypatch):
    assert progress.position(0) == ("", "")
    started = time.time() - 60
    assert progress.position(None, 4, started) == ("", "")
    assert progress.position(0, 4, started) == ("[1/4] ", "")
    prefix, eta = progress.position(2, 4, started)  # 2 runs in 60 s: 2 more take about 60 s
    assert prefix == "[3/4] " and eta.startswith("sweep ETA 0:0")


def test_progress_logs_a_start_and_an_end_line_when_not_on_a_terminal(caplog):
    class NotATerminal:
        def isatty(self):
            return False

        def write(self, text):
            raise AssertionError("nothing is redrawn off a terminal")

        def flush(self):
            pass

    with caplog.at_level(logging.INFO, logger="runner.run.progress"):
        with progress.Progress("mask_rcnn_fpn fp16", None, stream=NotATerminal()):
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert any("mask_rcnn_fpn fp16" in m and "elapsed" in m for m in messages)
    assert any(m.startswith("done in 0:00:0") for m in messages)
