"""Data-parallel training: 2 gloo processes (torchrun) give the single-process adapter."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from adapterhub.registry import Registry


ARGS = ["--scenario", "jsonl", "--base", "random:tiny", "--quant", "fp32", "--device", "cpu", "--max-steps", "6",
        "--eval-every", "3", "--n-valid", "24", "--n-test", "24", "--lr", "5e-3", "--seed", "3", "--dropout", "0",
        # one row per group, so that 2 x 4 candidates are exactly the single process's 8
        "--group-size", "1", "--negatives", "0", "--force"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_training_matches_single_process(tmp_path, toy_folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["train", "toy", "--data", str(toy_folder), *ARGS]
    # dropout is random per process, so compare with it off; 2 x 4 rows == 1 x 8 rows per step
    single = subprocess.run([sys.executable, "-m", "adapterhub", *common, "--batch-size", "8",
                             "--registry", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29533", "-m", "adapterhub", *common,
                            "--batch-size", "4", "--registry", str(tmp_path / "two")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-2000:]
    _, a, card_a, _ = Registry(tmp_path / "one").load("toy")
    _, b, card_b, _ = Registry(tmp_path / "two").load("toy")
    assert card_b["train"]["world_size"] == 2 and card_a["train"]["world_size"] == 1
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # it trained
