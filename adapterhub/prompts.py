"""Scenario prompt templates (TALLRec-style Yes/No); the only place templates live.

prompt = prefix + suffix. The prefix depends only on the user's history (and dislikes), so all of
one user's candidates share it and the hub can cache it; the suffix names the candidate and ends
with "Answer:", after which the model's next token is " Yes" or " No".

A custom scenario (one the user's data names) gets the generic template, or its own: its
meta.json "templates" are registered here with register_templates(scenario, history, question)
and used for that scenario name from then on in this process.
"""
from __future__ import annotations

import string

from .datasets.common import MAX_HISTORY, Example, Item
from .errors import DataError

ANSWERS = (" Yes", " No")   # the model code takes the first token of each
MAX_WORDS = 12              # per item text: keeps prompts short for CPU training

# scenario -> (history sentence, question); {items} / {item} are quoted item texts
TEMPLATES = {
    "video": ("The user watched and liked these movies, oldest first: {items}.",
              "Will the user like the movie {item}?"),
    "ecommerce": ("The user bought these products, oldest first: {items}.",
                  "Will the user buy the product {item}?"),
    "news": ("The user clicked these news articles, oldest first: {items}.",
             "Will the user click the news article {item}?"),
    "music": ("The user listened to these artists, oldest first: {items}.",
              "Will the user listen to the artist {item}?"),
    "generic": ("The user interacted with these items, oldest first: {items}.",
                "Will the user interact with the item {item}?"),
}
PLACEHOLDERS = {"history": "items", "question": "item"}   # the one field each template must have
EMPTY_HISTORY = "The user has no history yet."
DISLIKED = "\nThe user disliked: {items}."


_REGISTERED: dict[str, tuple[str, str]] = {}   # custom scenario -> (history sentence, question)


def check_template(text, part: str) -> str:
    """`text` is a valid `part` template ('history' or 'question'): exactly one {items} / {item} field."""
    want = PLACEHOLDERS[part]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"the {part} template must be a non-empty string containing {{{want}}}, got {text!r}",
                        field=f"templates.{part}")
    try:
        found = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as e:  # an unbalanced brace
        raise DataError(f"the {part} template {text!r} is not a format string ({e}); write {{{{ and }}}} for "
                        "literal braces", field=f"templates.{part}") from None
    if found != [want]:
        raise DataError(f"the {part} template {text!r} must contain {{{want}}} exactly once and no other "
                        f"{{...}} field (found: {', '.join('{' + f + '}' for f in found) or 'none'})",
                        field=f"templates.{part}")
    return text


def register_templates(scenario: str, history: str | None = None, question: str | None = None) -> tuple[str, str]:
    """Use these templates for the custom `scenario` from now on (in this process); -> (history, question).

    history is the sentence around the quoted history items ({items}), question the one around the
    candidate ({item}); one left out keeps the generic template's. The built-in scenarios keep theirs:
    the shipped adapters were trained on them.
    """
    pair = (check_template(history or TEMPLATES["generic"][0], "history"),
            check_template(question or TEMPLATES["generic"][1], "question"))
    if scenario in TEMPLATES and pair != TEMPLATES[scenario]:
        raise DataError(f"scenario {scenario!r} is built in (built in: {', '.join(TEMPLATES)}) and keeps its "
                        "templates; give your data another scenario name (meta.json \"scenario\" or --scenario)",
                        field="scenario")
    _REGISTERED[scenario] = pair
    return pair


def registered_templates(scenario: str) -> dict[str, str] | None:
    """{"history": ..., "question": ...} when `scenario` has registered templates (for a card), else None."""
    pair = _REGISTERED.get(scenario)
    return None if pair is None else {"history": pair[0], "question": pair[1]}


def templates(scenario: str) -> tuple[str, str]:
    """(history sentence, question) for a scenario: registered, built in, or the generic one."""
    return _REGISTERED.get(scenario) or TEMPLATES.get(scenario, TEMPLATES["generic"])


def quote(text: str) -> str:
    words = str(text).split()
    if len(words) > MAX_WORDS:
        words = words[:MAX_WORDS] + ["..."]
    return '"' + " ".join(words) + '"'


def render_history(scenario: str, history_texts, disliked_texts=()) -> str:
    """The prefix from raw item texts (oldest first); only the last MAX_HISTORY are shown."""
    sentence = templates(scenario)[0]
    history_texts = list(history_texts)[-MAX_HISTORY:]
    disliked_texts = list(disliked_texts)[-MAX_HISTORY:]
    prefix = sentence.format(items=", ".join(map(quote, history_texts))) if history_texts else EMPTY_HISTORY
    if disliked_texts:
        prefix += DISLIKED.format(items=", ".join(map(quote, disliked_texts)))
    return prefix


def render_candidate(scenario: str, candidate_text: str) -> str:
    """The suffix from the candidate's raw text: starts with a newline, ends with 'Answer:'."""
    question = templates(scenario)[1]
    return "\n" + question.format(item=quote(candidate_text)) + " Answer:"


def render(scenario: str, example: Example, items: dict[str, Item]) -> tuple[str, str]:
    """-> (prefix, suffix) for one example; the answer is ANSWERS[0] if example.label else ANSWERS[1]."""
    def text(item_id: str, field: str) -> str:
        if item_id not in items:
            raise DataError(f"item id {item_id!r} is not in the scenario's items", field=field)
        return items[item_id].text
    prefix = render_history(scenario, [text(i, "history") for i in example.history[-MAX_HISTORY:]],
                            [text(i, "disliked") for i in example.disliked[-MAX_HISTORY:]])
    return prefix, render_candidate(scenario, text(example.candidate, "candidate"))
