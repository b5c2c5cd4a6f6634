"""A training run keeps its work: Ctrl-C publishes the best check, a killed run resumes from its last
check, the start-up summary and checks say what is going on, and the CLI has a CPU time budget."""
import logging
import os
import signal

import pytest
import torch

from adapterhub.config import TrainConfig
from adapterhub.train import loop as train_loop
from adapterhub.train.resume import human_duration, run_folder

FAST = dict(max_steps=6, eval_every=2, lr=1e-2, batch_size=8, patience=10, n_valid=24, n_test=24)


def _step_hook(monkeypatch, at_step: int, action):
    """Run `action` once, right after the loop's step number `at_step` (1-based)."""
    real, count = train_loop.Loop.step, [0]

    def step(self, opt, sched):
        out = real(self, opt, sched)
        count[0] += 1
        if count[0] == at_step:
            action()
        return out
    monkeypatch.setattr(train_loop.Loop, "step", step)


def test_ctrl_c_stops_after_the_step_and_publishes_the_best_check(hub, toy, monkeypatch):
    before = signal.getsignal(signal.SIGINT)   # (ignored when the tests run as a background job)
    _step_hook(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    adapter, card = hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    assert card["train"]["interrupted"] == {"at_step": 3, "reason": "Ctrl-C"}
    assert card["train"]["steps"] == 3 and [e["step"] for e in card["train"]["log"]] == [2, 3]   # a last check at 3
    assert hub.registry.versions("toy") == ["v1"] and "test" in card["metrics"]
    assert not run_folder(hub.registry.root, "toy").exists()   # published: its checkpoint is gone
    assert signal.getsignal(signal.SIGINT) is before   # the handler is put back


def test_a_second_ctrl_c_aborts_without_publishing(hub, toy, monkeypatch):
    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    _step_hook(monkeypatch, 3, twice)
    with pytest.raises(KeyboardInterrupt):
        hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    assert "toy" not in hub.registry.names()
    assert run_folder(hub.registry.root, "toy").exists()   # the check at step 2 is kept for --resume


def test_a_killed_run_resumes_from_its_last_check_to_the_same_weights(hub, toy, monkeypatch, tmp_path):
    from adapterhub.hub import Hub
    whole = Hub(base=hub.base, registry=tmp_path / "whole")
    _, reference = whole.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    ref_config, ref_tensors, _, _ = whole.registry.load("toy")

    def killed():
        raise RuntimeError("killed")
    with monkeypatch.context() as m:
        _step_hook(m, 5, killed)     # dies after step 5: the checkpoint of step 4 is on disk
        with pytest.raises(RuntimeError, match="killed"):
            hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    assert run_folder(hub.registry.root, "toy").exists() and "toy" not in hub.registry.names()
    with pytest.raises(Exception, match="another run"):      # other options: not this run's checkpoint
        hub.train("toy", toy, TrainConfig(**{**FAST, "lr": 2e-2}), progress=False, force=True, resume=True)
    _, card = hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True, resume=True)
    _, tensors, _, _ = hub.registry.load("toy")
    same = ("step", "loss", "val_auc")   # the log also holds timings
    assert [[e[k] for k in same] for e in card["train"]["log"]] == [[e[k] for k in same] for e in reference["train"]["log"]]
    assert all(torch.equal(tensors[k], ref_tensors[k]) for k in ref_tensors)   # bit for bit the uninterrupted run
    assert not run_folder(hub.registry.root, "toy").exists()


def test_resume_without_a_checkpoint_says_so(hub, toy):
    with pytest.raises(Exception, match="no checkpoint"):
        hub.train("toy", toy, TrainConfig(**FAST), progress=False, resume=True)


def test_the_start_up_summary_and_each_check_are_logged(hub, toy, caplog):
    with caplog.at_level(logging.INFO, logger="adapterhub"):
        hub.train("toy", toy, TrainConfig(**FAST), progress=False, force=True)
    text = caplog.text
    assert "train examples in" in text and "plan: 6 steps" in text and "budget: no time limit" in text
    assert "to beat on valid auc (toy): base " in text and "most-popular" in text
    assert "validating 24 examples" in text and "| check " in text


def test_the_cli_gives_a_cpu_run_a_default_budget(toy_folder, tmp_path):
    import json
    from adapterhub.cli import main
    args = ["--format", "jsonl", "--data", str(toy_folder), "--base", "random:tiny", "--quant", "fp32",
            "--device", "cpu", "--max-steps", "2", "--eval-every", "2", "--n-valid", "24", "--n-test", "24"]
    assert main(["train", "a", *args, "--registry", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "a" / "v1" / "card.json").read_text())["train"]["max_minutes"] == 30
    assert main(["train", "b", *args, "--registry", str(tmp_path / "r"), "--max-minutes", "none"]) == 0
    assert json.loads((tmp_path / "r" / "b" / "v1" / "card.json").read_text())["train"]["max_minutes"] is None


def test_human_durations():
    assert [human_duration(s) for s in (12.4, 250, 11520, float("inf"))] == ["12 s", "4 min 10 s", "3 h 12 min",
                                                                             "unknown"]
