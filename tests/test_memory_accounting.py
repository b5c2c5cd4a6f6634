"""GPU memory figures mean what they say, checked on CPU with torch.cuda's allocator counters mocked:
each peak is reset before the work it measures (a load's peak is not a forward's), steady bytes are
what a load leaves allocated, training's peak is the allocator's (not host RSS), and timers wait
for the GPU before they are read."""
from __future__ import annotations

import pytest
import torch

from adapterhub import memory


class FakeAllocator:
    """torch.cuda's memory counters, driven by the test: alloc/free move 'allocated', the peak follows."""

    def __init__(self):
        self.allocated, self.peak, self.calls = 0, 0, []

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def memory_allocated(self, device=None) -> int:
        return self.allocated

    def max_memory_allocated(self, device=None) -> int:
        return self.peak

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append("reset")
        self.peak = self.allocated

    def synchronize(self, device=None) -> None:
        self.calls.append("sync")

    def empty_cache(self) -> None:
        self.calls.append("empty")


@pytest.fixture
def fake_cuda(monkeypatch):
    from adapterhub.quantize import import_bitsandbytes
    import_bitsandbytes()  # imported for real first: under a mocked is_available it would look for CUDA kernels
    fake = FakeAllocator()
    for name in ("memory_allocated", "max_memory_allocated", "reset_peak_memory_stats", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    return fake


def allocating(model, fake: FakeAllocator, n: int):
    """Every forward of `model` allocates n bytes while it runs (its activations, in this fake)."""
    model.register_forward_pre_hook(lambda m, a: fake.alloc(n))
    model.register_forward_hook(lambda m, a, o: fake.free(n))
    return model


def test_gpu_peak_is_the_bodys_own(fake_cuda):
    fake_cuda.alloc(9000)
    fake_cuda.free(8500)          # an earlier peak of 9000; 500 still alive
    with memory.gpu_peak("cuda") as m:
        fake_cuda.alloc(300)
        fake_cuda.free(300)
    assert m == {"start_bytes": 500, "peak_bytes": 800, "end_bytes": 500}
    assert fake_cuda.calls[:2] == ["sync", "reset"] and fake_cuda.calls[-1] == "sync"
    fake_cuda.calls.clear()
    with memory.gpu_peak("cpu") as m:  # off CUDA: nothing measured, nothing touched
        pass
    assert m == {} and fake_cuda.calls == []


def test_base_suite_separates_steady_load_forward_and_train_step(fake_cuda, monkeypatch):
    """The numbers that once read the same for every quant mode (~4 bytes per parameter: the peak was
    never reset, and the fp32 build was counted) are now each their own."""
    from adapterhub.bench import memory as suite
    from adapterhub.base import load_base

    def fake_load(spec, quant, device):
        fake_cuda.alloc(4000)       # one tensor being quantized ...
        fake_cuda.alloc(1000)       # ... the weights that stay
        fake_cuda.free(4000)
        b = load_base("random:tiny", quant="fp32", device="cpu")
        allocating(b.model, fake_cuda, 300)
        return b
    monkeypatch.setattr("adapterhub.base.load_base", fake_load)
    monkeypatch.setattr(suite, "FWD_SEQ", 16)
    monkeypatch.setattr(suite, "TRAIN_SEQ", 16)
    fake_cuda.alloc(200)            # left over from before: not the base's
    out = suite.measure_gpu("random:tiny", "nf4", "cuda")
    assert out["gpu_before_bytes"] == 200
    assert out["steady_gpu_bytes"] == 1000          # allocated after the load, minus before
    assert out["load_peak_gpu_bytes"] == 5000        # the load's own peak
    assert out["forward_peak_gpu_bytes"] == 1300     # reset after the load: the load's 5000 is not in it
    assert out["train_step_peak_gpu_bytes"] == 1300
    assert fake_cuda.calls.count("reset") == 3 and "empty" in fake_cuda.calls


def test_base_suite_records_each_gpu_figure_per_quant(tmp_path):
    from adapterhub.bench import memory as suite
    from adapterhub.bench.common import Recorder
    rec = Recorder("base", str(tmp_path), base="random:llama-1b", device="cuda")
    m = {"load_s": 1.0, "param_bytes": 10, "linear_bytes": 6, "gpu_before_bytes": 0, "steady_gpu_bytes": 11,
         "load_peak_gpu_bytes": 12, "forward_peak_gpu_bytes": 13, "train_step_peak_gpu_bytes": 14}
    suite.record(rec, "nf4", m)
    got = {r["metric"]: r for r in rec.rows}
    assert {k: got[k]["value"] for k in suite.GPU_ROWS} == {k: m[k] for k in suite.GPU_ROWS}
    assert got["forward_peak_gpu_bytes"]["seq"] == suite.FWD_SEQ and got["param_bytes"]["linear_bytes"] == 6
    assert all(r["quant"] == "nf4" and r["dtype"] == "nf4/bfloat16" for r in rec.rows)
    assert "peak_rss_bytes" not in got  # one CUDA process for every mode: its RSS is no single mode's


def test_training_peak_is_the_allocators_and_timers_wait_for_the_gpu(fake_cuda, monkeypatch):
    """The PEFT loop's peak comes from max_memory_allocated over its timed steps (not ru_maxrss), and
    every step is synchronised before its timer is read."""
    import peft
    from adapterhub.bench import training
    from adapterhub.base import load_base

    def fake_peft_model(base, quant, device, compute, adapter_dir=None):
        b = load_base("random:tiny", quant="fp32", device="cpu")
        model = peft.get_peft_model(b.model, peft.LoraConfig(r=4, target_modules=training.TARGETS,
                                                             task_type="CAUSAL_LM"))
        allocating(b.model, fake_cuda, 700)
        yes, no = (b.tokenizer.encode(a, add_special_tokens=False)[0] for a in (" Yes", " No"))
        return b, model, yes, no
    monkeypatch.setattr(training, "peft_model", fake_peft_model)
    fake_cuda.alloc(5000)  # the base
    out = training.child_peft("random:tiny", "nf4", "cuda", "synthetic", steps=1, batch=2, compute="native")
    assert out["gpu_start_bytes"] == 5000 and out["peak_gpu_bytes"] == 5700
    steps = 2  # the warm-up and a timed one: each synchronised before and after, and the peak's own two
    assert fake_cuda.calls.count("sync") == 2 * steps + 2


def test_training_rows_say_which_memory_they_measured(tmp_path):
    from adapterhub.bench import training
    from adapterhub.bench.common import Recorder
    rec = Recorder("train", str(tmp_path), base="random:llama-8b", device="cuda", quant="nf4")
    params = {"scenario": "synthetic", "mode": "peft", "steps": 8, "batch_size": 8, "rank": 8}
    gpu = {"candidates_per_s": 10.0, "peak_bytes": 3e9, "peak_gpu_bytes": 7e9, "gpu_start_bytes": 5e9,
           "tokens_per_candidate": 300.0, "compute": "native"}
    training.record(rec, params, "peft", gpu, {"peft": gpu})
    got = {r["metric"]: r for r in rec.rows}
    assert got["train_peak_gpu_bytes"]["value"] == 7e9 and got["train_peak_gpu_bytes"]["memory"] == "cuda_max_allocated"
    assert "train_peak_bytes" not in got  # host RSS is not the GPU's peak
    assert got["train_candidates_per_s"]["prompt_tokens_per_s"] == 3000.0


def test_used_bytes_on_cuda_waits_for_queued_work(fake_cuda):
    from adapterhub.bench.common import used_bytes
    fake_cuda.alloc(123)
    assert used_bytes("cuda") == 123 and fake_cuda.calls == ["sync"]
