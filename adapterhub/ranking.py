"""One user's ranking in two halves: `plan` (prompts rendered, tokenized and checked; no forward) and
`run` (the forward and the ranking). Hub.recommend is run(plan(...)); a server plans in the
request's thread, counts the plan's tokens against its budgets, and only then queues the forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import checks


@dataclass
class Ranking:
    """A planned ranking: what `run` scores."""
    plan: object                                     # adapterhub.recommend.Plan (key, candidates, facts, blend)
    groups: list[tuple[list[int], list[list[int]]]]  # (history prefix ids, [candidate ids, ...]) per packed row

    @property
    def tokens(self) -> int:
        """Tokens its forward runs (each packed row repeats the prefix)."""
        return sum(len(p) + sum(map(len, s)) for p, s in self.groups)


def plan(hub, ref: str, history, candidates, disliked=(), scenario: str | None = None, catalog=None,
         max_group_tokens: int | None = None, max_tokens: int | None = None, adapter=None) -> Ranking:
    """Render one user's ranking under adapter `ref` and tokenize it: packed rows of the history and
    up to hub.batch_size candidates (and, given max_group_tokens, about that many tokens; a server
    bounding its forwards passes its budget). DataError for an item that is not text or a prompt over
    the base's positions; ConfigError for a scenario the adapter was not trained on
    (adapterhub.recommend.plan); checks.OverBudget as soon as the packed rows pass max_tokens (before a
    bad title further on, which is then not read: of a request's faults, the first met is the one named).
    adapter: ref's resident Adapter, where the caller has it (a server's event loop may not read the disk)."""
    from . import recommend
    adapter = adapter if adapter is not None else hub.load(ref)  # resident: a lookup; else read from the registry
    key = adapter.key
    history, disliked = checks.check_items(history, "history"), checks.check_items(disliked, "disliked")
    candidates = list(candidates)
    p = recommend.plan(hub, key, adapter.card, history, candidates, disliked, scenario,
                       hub.catalog if catalog is None else catalog, suffixes=False)
    prefix = checks.encode_row(hub, p.prefix, "history")
    groups, used, total, texts = [], 0, 0, []
    # titles and ids are checked and rendered as they are counted: refusing a ranking over max_tokens
    # costs about the budget's worth of work, not the whole request's (item dicts' facts are read first)
    refs = _refs_checking_titles(p.refs, candidates)
    for i, text in enumerate(recommend.render_suffixes(p.scenario, p.facts, p.history, refs)):
        texts.append(text)
        s = checks.encode_row(hub, text, f"candidates[{i}]", False, len(prefix))
        if not groups or len(groups[-1][1]) >= hub.batch_size or (max_group_tokens and used + len(s) > max_group_tokens):
            groups.append((prefix, []))
            used = len(prefix)
            total += len(prefix)
        groups[-1][1].append(s)
        used += len(s)
        total += len(s)
        if max_tokens is not None and total > max_tokens:
            raise checks.OverBudget(total, max_tokens, "the ranking")
    p.suffixes = texts
    return Ranking(p, groups)


def _refs_checking_titles(refs: list, candidates: list):
    """refs, each one's candidate checked just before it is rendered (a title must be valid text)."""
    for i, (ref, candidate) in enumerate(zip(refs, candidates)):
        if isinstance(candidate, str):
            checks.check_text(candidate, f"candidates[{i}]")
        yield ref


@torch.inference_mode()
def scores(hub, ranking: Ranking, raw: bool = False) -> list[float]:
    """Each candidate's score, in candidate order: the fused probability, or P(yes) when raw or when
    the version has no fused blend (adapterhub.recommend.finish)."""
    if not ranking.groups:  # no candidates
        return []
    return finish(ranking, torch.sigmoid(hub.packed_logits(ranking.plan.key, ranking.groups)).tolist(), raw)


def finish(ranking: Ranking, probs: list[float], raw: bool = False) -> list[float]:
    """Each candidate's P(yes) (in candidate order) -> its score, fused unless raw (see scores)."""
    from . import recommend
    return [f for _, f, _ in recommend.finish(ranking.plan, probs, raw)]


def run(hub, ranking: Ranking, k: int = 10, raw: bool = False) -> list[tuple[str, float]]:
    """Top-k (candidate, score), best first (see scores)."""
    ranked = zip(ranking.plan.candidates, scores(hub, ranking, raw))
    return sorted(ranked, key=lambda r: -r[1])[:k]
