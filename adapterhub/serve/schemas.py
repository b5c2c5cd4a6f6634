"""Request and response bodies. `model` names the adapter ('news', 'news@v1', or 'base' for the bare
base) everywhere; the first routes' `adapter` is the same field under its old name."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

MAX_ROWS = 256                # rows of one /score request
MAX_TEXT_CHARS = 16_000       # one prompt or item text
MAX_ITEMS = 1_000             # candidates (or history items) of one ranking
MAX_REF_CHARS = 200           # an adapter reference ('name@vN' or a composition)

Text = Field(max_length=MAX_TEXT_CHARS)
Items = list[str]
MODEL_HELP = "the adapter: a name (its current version), name@vN, or 'base' for the base alone"


def _model(default=..., help: str = MODEL_HELP):
    return Field(default, max_length=MAX_REF_CHARS, validation_alias=AliasChoices("model", "adapter"),
                 description=help + "; 'adapter' is accepted as an old name of this field", examples=["news"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # a misspelt field is an error


def _check_texts(texts) -> None:
    if any(len(t) > MAX_TEXT_CHARS for t in texts):
        raise ValueError(f"an item text is longer than {MAX_TEXT_CHARS} characters")


# ---------------------------------------------------------------- /score (P(yes) of whole prompts)
class Row(_Body):
    model: Optional[str] = _model(None)
    prompt: str = Text


class ScoreBody(_Body):
    rows: Optional[list[Row]] = Field(None, max_length=MAX_ROWS, description="[{model, prompt}, ...]: one adapter per row")
    model: Optional[str] = _model(None, "the adapter of every prompt (with 'prompts')")
    prompts: Optional[list[str]] = Field(None, max_length=MAX_ROWS)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.rows is None) == (self.prompts is None):
            raise ValueError("give either 'rows' [{model, prompt}] or 'model' + 'prompts'")
        if self.rows is not None and self.model is not None:
            raise ValueError("'model' goes with 'prompts'; with 'rows' each row names its adapter")
        _check_texts(self.prompts or ())
        return self

    def pairs(self) -> list[tuple[Optional[str], str]]:
        if self.rows is not None:
            return [(r.model, r.prompt) for r in self.rows]
        return [(self.model, p) for p in self.prompts]


class ScoreReply(BaseModel):
    scores: list[float] = Field(description="P(yes) per row")
    adapters: list[Optional[str]] = Field(description="the version each row used (null: the base)")
    usage: dict = Field(description='{"total_tokens": N}')


# ---------------------------------------------------------------- ranking
class _Ranking(_Body):
    disliked: Items = Field(default_factory=list, max_length=MAX_ITEMS, description="items the user disliked")
    scenario: Optional[str] = Field(None, max_length=64, description="which of a jointly trained adapter's scenarios")
    raw: bool = Field(False, description="rank by the adapter's P(yes) alone, not the version's fused score")


class RecommendBody(_Ranking):
    model: str = _model()
    history: Items = Field(max_length=MAX_ITEMS, description="the user's items, oldest first")
    candidates: Items = Field(max_length=MAX_ITEMS)
    k: int = Field(10, ge=1, le=MAX_ITEMS)

    @model_validator(mode="after")
    def _texts(self):
        _check_texts(self.history + self.candidates + self.disliked)
        return self


class Document(_Body):
    text: str = Text


class RerankBody(_Ranking):
    """POST /v1/rerank as Cohere, Jina and vLLM take it: `query` is the user's history, `documents`
    the candidates to rank."""
    model: str = _model(help="the adapter ranking the documents: a name or name@vN")
    query: Union[list[str], str] = Field(description="the user's history, oldest first: a list of items, or one "
                                                     "string of items one per line",
                                         examples=[["Dune (1984)", "Alien (1979)"]])
    documents: list[Union[str, Document]] = Field(min_length=1, max_length=MAX_ITEMS, description="the candidates",
                                                  examples=[["Blade Runner (1982)", "Notting Hill (1999)"]])
    top_n: Optional[int] = Field(None, ge=1, le=MAX_ITEMS, description="how many results (default: all)")
    return_documents: bool = Field(True, description="echo each result's document")

    @model_validator(mode="after")
    def _texts(self):
        if isinstance(self.query, list) and len(self.query) > MAX_ITEMS:
            raise ValueError(f"query has {len(self.query)} items, over {MAX_ITEMS}")
        if isinstance(self.query, str) and len(self.query) > MAX_TEXT_CHARS * 8:
            raise ValueError(f"query is longer than {MAX_TEXT_CHARS * 8} characters")
        _check_texts(self.history() + self.texts() + self.disliked)
        return self

    def history(self) -> list[str]:
        return self.query if isinstance(self.query, list) else [t for t in self.query.splitlines() if t.strip()]

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Optional[Document] = None


class RerankReply(BaseModel):
    id: str
    model: str = Field(description="the adapter version that ranked")
    results: list[RerankResult]
    usage: dict


# ---------------------------------------------------------------- adapters
class LoadBody(_Body):
    model: str = _model()
    reload: bool = Field(False, description="re-resolve a plain name: a promoted version replaces the resident one")


class LoraLoadBody(_Body):
    """vLLM's /v1/load_lora_adapter shape. Adapters load from the registry by name: no path is taken."""
    lora_name: str = Field(max_length=MAX_REF_CHARS)
    lora_path: Optional[str] = Field(None, description="refused when given: adapters load from the registry by name")
    reload: bool = False


class LoraUnloadBody(_Body):
    lora_name: str = Field(max_length=MAX_REF_CHARS)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "adapterhub"
    root: Optional[str] = Field(None, description="the version a plain name means now (the base's name for 'base')")
    parent: Optional[str] = None
    current: Optional[str] = None
    versions: list[str] = Field(default_factory=list)
    scenarios: list[str] = Field(default_factory=list, description="what `scenario` may name (several: a joint adapter)")
    description: Optional[str] = None
    resident: list[str] = Field(default_factory=list)
    error: Optional[str] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
