"""The server's limits as one flat config, and where its keys come from (no FastAPI import: the CLI
builds its options from this module before it knows whether the 'serve' extra is installed)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

API_KEY_ENV = "ADAPTERHUB_API_KEY"
ADMIN_KEY_ENV = "ADAPTERHUB_ADMIN_KEY"


def keys_from(value: str | None, env: str) -> tuple[str, ...]:
    """'k1,k2' (or the environment variable when value is None) -> ('k1', 'k2')."""
    value = os.environ.get(env) if value is None else value
    return tuple(k.strip() for k in (value or "").split(",") if k.strip())


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = _f(1 << 20, "a request body over this many bytes is a 413 before it is parsed")
    max_model_len: int | None = _f(None, "tokens of one prompt (a ranking: the history and one candidate); "
                                         "none: the base's positions")
    max_request_tokens: int = _f(16_384, "tokens one request may run (a ranking repeats its history once per "
                                         "packed row of candidates); more is a 400 before any work")
    max_batch_tokens: int = _f(1024, "tokens per forward: a bigger request runs over several forwards, with other "
                                     "requests served in between")
    bulk_tokens: int | None = _f(1024, "a request of more tokens runs on a second worker whose forwards pause twice a "
                                       "layer while lighter requests wait (the default is the default "
                                       "--max-batch-tokens: a request over one forward is bulk; raise both together); "
                                       "none: one worker")
    prepare_on_loop_chars: int | None = _f(32_768, "a scoring request whose texts total at most this many characters, "
                                                   "over resident adapters, is tokenized and checked on the event loop "
                                                   "(a refusal then needs no thread); none: always in a thread")
    max_queue: int = _f(64, "requests admitted at once (waiting or running); more get 503 + Retry-After")
    max_queue_tokens: int = _f(131_072, "tokens admitted at once; more get 503 + Retry-After")
    queue_timeout_s: float = _f(10.0, "a request whose forward has not started after this long is dropped "
                                      "(503 + Retry-After)")
    request_timeout_s: float = _f(30.0, "a request not answered after this long gets a 504")
    retry_after_s: int = _f(1, "the Retry-After header of a 503, in seconds")

    def check(self) -> "Limits":
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
               if getattr(self, f.name) is not None and not getattr(self, f.name) > 0]
        if bad:
            from ..errors import ConfigError
            raise ConfigError(f"server limits must be positive: {', '.join(bad)}")
        return self

    def replace(self, **changes) -> "Limits":
        return Limits(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})
