"""Scenario prompt templates (TALLRec-style Yes/No); the only place templates live.

prompt = prefix + suffix. The prefix depends only on the user's history (and dislikes), so all of
one user's candidates share it and the hub can cache it; the suffix names the candidate and ends
with "Answer:", after which the model's next token is " Yes" or " No".

With a version's facts (adapterhub.facts; facts=... on render / render_history / render_candidate)
each item is followed by its facts, the video prefix adds the share of liked items, and the
suffix adds how many history items share the candidate's category or tags. Without facts
(facts=None) the prompts are exactly the ones the v1 adapters were trained on.

A custom scenario (one the user's data names) gets the generic template, or its own: its
meta.json "templates" are registered here with register_templates(scenario, history, question)
and used for that scenario name from then on in this process.
"""
from __future__ import annotations

import string

from . import facts as _facts
from .datasets.common import MAX_HISTORY, Example, Item, one_line
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


def register_card_templates(card: dict, name: str) -> None:
    """A custom scenario's prompt sentences travel with its card (a joint card's: with each part)."""
    if card.get("templates"):
        register_templates(card.get("scenario", name), **card["templates"])
    for scenario, part in (card.get("scenarios") or {}).items():
        if part.get("templates"):
            register_templates(scenario, **part["templates"])


def registered_templates(scenario: str) -> dict[str, str] | None:
    """{"history": ..., "question": ...} when `scenario` has registered templates (for a card), else None."""
    pair = _REGISTERED.get(scenario)
    return None if pair is None else {"history": pair[0], "question": pair[1]}


def templates(scenario: str) -> tuple[str, str]:
    """(history sentence, question) for a scenario: registered, built in, or the generic one."""
    return _REGISTERED.get(scenario) or TEMPLATES.get(scenario, TEMPLATES["generic"])


def quote(text: str) -> str:
    """'a  long\ntitle' -> '"a long title"', cut to MAX_WORDS words."""
    return '"' + one_line(text, MAX_WORDS) + '"'


# ---------------------------------------------------------------- facts (adapterhub.facts)
# With facts, every item is followed by its facts, e.g. "Heat (1995)" (Action, Crime; liked by 71%
# of viewers; top 10% popular), the prefix says what share of rated items the user liked (video)
# and the suffix how many history items share the candidate's category or tags. Music item texts
# already carry the artist's tags, so music facts show popularity only.
NEW_ITEM = "new item"
# which facts are shown: c category (+ news subcategory), r like-rate, b popularity. History items
# show fewer than the candidate: the rules only need their categories, and prompts stay short.
ITEM_FACTS = {"video": ("c", "r", "b"), "news": ("c", "b"), "ecommerce": ("c", "b"), "music": ("b",),
              "generic": ("c", "b")}
HISTORY_FACTS = {"video": ("c",), "news": ("c",), "ecommerce": ("c",), "music": (), "generic": ("c",)}
LIKE_SHARE = {"video": "\nThe user liked {pct}% of the movies they rated."}
# scenario -> (overlap_counts key, sentence); {n} history items of {m} share it, {k} the subcategory
OVERLAP = {
    "video": ("genres", " It shares a genre with {n} of the {m} liked movies."),
    "news": ("category", " Same category as {n} of the {m} clicked articles{sub}."),
    "ecommerce": ("category", " Same brand as {n} of the {m} bought products."),
    "music": ("tags", " It shares a tag with {n} of the {m} artists."),
    "generic": ("category", " Same category as {n} of the {m} items."),
}
SUBCATEGORY = ", same subcategory as {k}"


def _popularity(entry: dict, new: bool) -> str:
    if "b" in entry:
        return f"top {entry['b']}% popular"
    return "less popular" if entry.get("p") else NEW_ITEM if new else "unpopular"


def item_facts(scenario: str, entry: dict | None, history: bool = False, new: bool = False) -> str:
    """The facts of one item as the prompt shows them after its text: ' (Action, Crime; ...)', or
    '' when there are none to show. history: the shorter set shown for history items. new (facts
    format >= 2): an item without train interactions is a new item, not an unpopular one."""
    if entry is None:
        return f" ({NEW_ITEM})"
    parts = []
    table = HISTORY_FACTS if history else ITEM_FACTS
    for key in table.get(scenario, table["generic"]):
        if key == "c" and entry.get("c"):
            c = entry["c"].replace("|", ", ") + (f"/{entry['s']}" if entry.get("s") else "")   # genres as words
            parts.append(f"brand {c}" if scenario == "ecommerce" else c)
        elif key == "r" and "r" in entry:
            parts.append(f"liked by {round(100 * entry['r'])}% of viewers")
        elif key == "b":
            parts.append(_popularity(entry, new))
    return f" ({'; '.join(parts)})" if parts else ""


def _resolve(facts: dict, refs) -> list[tuple[str, dict | None]]:
    """(text, facts entry or None) per item id or text."""
    out = []
    for ref in refs:
        entry = _facts.item(facts, ref)
        out.append((entry["t"] if entry is not None else str(ref), entry))
    return out


def _history_prefix(scenario: str, shown, shown_disliked, n_liked: int, n_disliked: int,
                    facts: dict | None) -> str:
    """shown / shown_disliked: [(text, entry)] of the last MAX_HISTORY items of each list."""
    new = _facts.is_new_format(facts)
    fmt = (lambda t, e: quote(t)) if facts is None else (lambda t, e: quote(t) + item_facts(scenario, e, True, new))
    sentence = templates(scenario)[0]
    prefix = sentence.format(items=", ".join(fmt(t, e) for t, e in shown)) if shown else EMPTY_HISTORY
    if shown_disliked:
        prefix += DISLIKED.format(items=", ".join(fmt(t, e) for t, e in shown_disliked))
    if facts is not None and scenario in LIKE_SHARE and n_liked + n_disliked:
        prefix += LIKE_SHARE[scenario].format(pct=round(100 * n_liked / (n_liked + n_disliked)))
    return prefix


def _candidate_suffix(scenario: str, text: str, entry: dict | None, facts: dict | None,
                      candidate, history) -> str:
    question = templates(scenario)[1]
    if facts is None:
        return "\n" + question.format(item=quote(text)) + " Answer:"
    out = "\n" + question.format(item=quote(text) + item_facts(scenario, entry, new=_facts.is_new_format(facts)))
    key, sentence = OVERLAP.get(scenario, OVERLAP["generic"])
    attribute = {"genres": "c", "category": "c", "tags": "g"}[key]
    if history and entry is not None and entry.get(attribute):
        counts = _facts.overlap_counts(facts, history, candidate)
        sub = SUBCATEGORY.format(k=counts["subcategory"]) if entry.get("s") else ""
        out += sentence.format(n=counts[key], m=len(history), sub=sub)
    return out + " Answer:"


def render_history(scenario: str, history_texts, disliked_texts=(), facts: dict | None = None) -> str:
    """The prefix (oldest first; only the last MAX_HISTORY items are shown).

    Without facts the lists hold item texts. With facts (adapterhub.facts) they hold item ids or
    texts, looked up in the facts (an unknown one is shown as a new item); pass the whole history:
    the shares the rules use count all of it."""
    history, disliked = list(history_texts), list(disliked_texts)
    if facts is None:
        shown = [(t, None) for t in history[-MAX_HISTORY:]]
        shown_disliked = [(t, None) for t in disliked[-MAX_HISTORY:]]
    else:
        shown, shown_disliked = _resolve(facts, history[-MAX_HISTORY:]), _resolve(facts, disliked[-MAX_HISTORY:])
    return _history_prefix(scenario, shown, shown_disliked, len(history), len(disliked), facts)


def render_candidate(scenario: str, candidate_text, facts: dict | None = None, history=()) -> str:
    """The suffix: starts with a newline, ends with 'Answer:'.

    Without facts candidate_text is the candidate's text. With facts it is its id or text, and
    `history` (the user's item ids or texts, all of them) gives the overlap counts."""
    if facts is None:
        return _candidate_suffix(scenario, candidate_text, None, None, None, ())
    (text, entry), = _resolve(facts, [candidate_text])
    return _candidate_suffix(scenario, text, entry, facts, candidate_text, list(history))


def render(scenario: str, example: Example, items: dict[str, Item], facts: dict | None = None,
           candidate_facts: dict | None = None) -> tuple[str, str]:
    """-> (prefix, suffix) for one example; the answer is ANSWERS[0] if example.label else ANSWERS[1].

    facts (adapterhub.facts) adds each item's facts and the user-side counts the rules use; the
    prefix still depends on the history and dislikes only. candidate_facts: the candidate's entry
    to show instead of the facts' own (training: facts.OwnLabelOut)."""
    def text(item_id: str, field: str) -> str:
        if item_id not in items:
            raise DataError(f"item id {item_id!r} is not in the scenario's items", field=field)
        return items[item_id].text

    def shown(ids, field):
        return [(text(i, field), _facts.item(facts, i)) for i in ids[-MAX_HISTORY:]]

    prefix = _history_prefix(scenario, shown(example.history, "history"), shown(example.disliked, "disliked"),
                             len(example.history), len(example.disliked), facts)
    entry = candidate_facts if candidate_facts is not None else _facts.item(facts, example.candidate)
    suffix = _candidate_suffix(scenario, text(example.candidate, "candidate"), entry, facts, example.candidate,
                               example.history)
    return prefix, suffix
