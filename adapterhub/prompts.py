"""Scenario prompt templates (TALLRec-style Yes/No); the only place templates live.

prompt = prefix + suffix. The prefix depends only on the user's history (and dislikes), so all of
one user's candidates share it and the hub can cache it; the suffix names the candidate and ends
with "Answer:", after which the model's next token is " Yes" or " No".
"""
from __future__ import annotations

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
EMPTY_HISTORY = "The user has no history yet."
DISLIKED = "\nThe user disliked: {items}."


def quote(text: str) -> str:
    words = str(text).split()
    if len(words) > MAX_WORDS:
        words = words[:MAX_WORDS] + ["..."]
    return '"' + " ".join(words) + '"'


def render_history(scenario: str, history_texts, disliked_texts=()) -> str:
    """The prefix from raw item texts (oldest first); only the last MAX_HISTORY are shown."""
    sentence = TEMPLATES.get(scenario, TEMPLATES["generic"])[0]
    history_texts = list(history_texts)[-MAX_HISTORY:]
    disliked_texts = list(disliked_texts)[-MAX_HISTORY:]
    prefix = sentence.format(items=", ".join(map(quote, history_texts))) if history_texts else EMPTY_HISTORY
    if disliked_texts:
        prefix += DISLIKED.format(items=", ".join(map(quote, disliked_texts)))
    return prefix


def render_candidate(scenario: str, candidate_text: str) -> str:
    """The suffix from the candidate's raw text: starts with a newline, ends with 'Answer:'."""
    question = TEMPLATES.get(scenario, TEMPLATES["generic"])[1]
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
