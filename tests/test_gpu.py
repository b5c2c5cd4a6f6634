"""GPU checks (pytest -m gpu on a CUDA machine; skipped cleanly without CUDA). The random base has
SmolLM2's architecture, so nothing is downloaded."""
import pytest
import torch

from conftest import PROMPTS, publish_random

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: -m gpu)")]


@pytest.fixture
def cuda_hub(tmp_path):
    from adapterhub.hub import Hub
    return Hub(base="random:tiny", registry=tmp_path / "adapters", quant="bf16", device="cuda")


def test_mixed_batch_on_cuda_equals_one_adapter_at_a_time(cuda_hub):
    publish_random(cuda_hub, "a", seed=1, scale=0.2)
    publish_random(cuda_hub, "b", seed=2, scale=0.2)
    rows = [("a", PROMPTS[0]), ("b", PROMPTS[1]), (None, PROMPTS[2]), ("a+b", PROMPTS[0])]
    alone = [cuda_hub.score([row])[0] for row in rows]
    assert cuda_hub.score(rows) == pytest.approx(alone, abs=2e-3)
    assert cuda_hub.device.type == "cuda"


def test_training_step_on_cuda_publishes_a_loadable_adapter(cuda_hub, toy):
    from adapterhub.config import TrainConfig
    adapter, card = cuda_hub.train("toy", toy, TrainConfig(max_steps=3, eval_every=3, n_valid=16, n_test=16),
                                   progress=False)
    assert card["train"]["steps"] == 3 and adapter.key == "toy@v1"
    assert 0.0 < cuda_hub.score([("toy", PROMPTS[0])])[0] < 1.0
