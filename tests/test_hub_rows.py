"""The hub refuses a row it would score wrongly, naming the row (no token of its own, text that does not
encode, more tokens than the base's positions), and a ranking under a scenario its adapter was not
trained for, listing the scenarios it was."""
from __future__ import annotations

import pytest
import torch

from adapterhub.errors import ConfigError, DataError

from conftest import PROMPTS, publish_random

HISTORY, CANDIDATES = ["red thing 1", "blue thing 2"], ["thing 3", "thing 4", "thing 5"]


@pytest.fixture
def hub(shared_base_hub):
    return shared_base_hub


@pytest.mark.parametrize("rows, where", [
    ([("base", PROMPTS[0]), ("base", "")], "row 1"),      # today: IndexError (over HTTP: the neighbour's score, 200)
    ([("base", "")], "row 0"),                             # today: ZeroDivisionError
    ([("base", "   ")], "row 0"),                          # whitespace: no token of its own either
    ([("base", PROMPTS[0]), ("base", "\ud800")], "row 1"),  # today: the tokenizer's TypeError
    ([("base", PROMPTS[0]), ("base", 7)], "row 1"),
])
def test_a_row_without_tokens_of_its_own_is_refused_by_name(hub, rows, where):
    with pytest.raises(DataError, match=where):
        hub.score(rows)


def test_a_row_over_the_bases_positions_is_refused(hub):
    assert hub.max_model_len == hub.model.config.max_position_embeddings
    with pytest.raises(DataError, match=rf"row 1: {hub.max_model_len + 1} tokens, over the base's {hub.max_model_len}"):
        hub.score([("base", "x"), ("base", "y" * (hub.max_model_len + 1))])  # the tiny tokenizer: a token per character


def test_the_other_rows_still_score_what_they_score_alone(hub):
    publish_random(hub, "news")
    alone = hub.score([("news", PROMPTS[0])])
    with pytest.raises(DataError):
        hub.score([("news", PROMPTS[0]), ("news", "")])
    assert hub.score([("news", PROMPTS[0]), ("news", PROMPTS[1])])[0] == pytest.approx(alone[0], abs=1e-6)


def test_empty_suffixes_and_bad_items_in_rankings(hub):
    publish_random(hub, "news")
    with pytest.raises(DataError, match="suffix 1"):
        hub.score_candidates("news", "The user liked a, b.", ["\nWill the user like c?", ""])
    with pytest.raises(DataError, match="no tokens"):  # packed_logits itself: a candidate of no token
        hub.packed_logits(None, [(hub.encode("abc"), [hub.encode("d"), []])])
    with pytest.raises(DataError, match=r"candidates\[1\]"):
        hub.recommend("news", HISTORY, ["thing 3", "bad \udcff"])
    with pytest.raises(DataError, match=r"history\[0\]"):
        hub.recommend("news", ["\ud800"], CANDIDATES)


def test_the_batcher_refuses_an_empty_row_and_answers_the_others(hub):
    from adapterhub.batcher import Batcher
    publish_random(hub, "news")
    want = hub.score([("news", PROMPTS[0])])[0]
    with Batcher(hub, window_ms=1) as batcher:
        with pytest.raises(DataError, match="row 1"):
            batcher.rows([None, None], [hub.encode("x"), []])
        with pytest.raises(DataError, match="row 1"):
            batcher.score([("news", PROMPTS[0]), ("news", "")])
        assert batcher.score([("news", PROMPTS[0])])[0] == pytest.approx(want, abs=1e-6)


def _publish_joint(hub, name="joint"):
    """A jointly trained adapter: its card names two scenarios."""
    version = publish_random(hub, name, seed=3)
    card_path = hub.registry.resolve(f"{name}@{version}") / "card.json"
    import json
    card = json.loads(card_path.read_text())
    card["scenarios"] = {"news": {}, "music": {}}
    card_path.write_text(json.dumps(card))
    return name


def test_a_joint_adapter_needs_one_of_its_scenarios(hub):
    name = _publish_joint(hub)
    with pytest.raises(ConfigError, match="pass scenario= one of news, music"):  # today over HTTP: 500
        hub.recommend(name, HISTORY, CANDIDATES)
    with pytest.raises(ConfigError, match="one of news, music .got 'video'"):
        hub.recommend(name, HISTORY, CANDIDATES, scenario="video")
    news = hub.recommend(name, HISTORY, CANDIDATES, scenario="news", k=3)
    music = hub.recommend(name, HISTORY, CANDIDATES, scenario="music", k=3)
    assert len(news) == len(music) == 3 and dict(news) != dict(music)  # each scenario's own template


def test_a_one_scenario_adapter_refuses_another_scenario(hub):
    publish_random(hub, "news")  # its card says scenario 'toy'
    with pytest.raises(ConfigError, match="trained for scenario 'toy', not 'video'"):  # today over HTTP: 200, generic
        hub.recommend("news", HISTORY, CANDIDATES, scenario="video")
    assert hub.recommend("news", HISTORY, CANDIDATES, scenario="toy") == hub.recommend("news", HISTORY, CANDIDATES)


def test_plan_then_run_is_recommend(hub):
    from adapterhub import ranking
    publish_random(hub, "news")
    planned = ranking.plan(hub, "news", HISTORY, CANDIDATES)
    assert planned.tokens == sum(len(p) + sum(map(len, s)) for p, s in planned.groups) > 0
    with torch.no_grad():
        assert ranking.run(hub, planned, k=3) == hub.recommend("news", HISTORY, CANDIDATES, k=3)


def test_a_ranking_over_its_budget_is_refused_having_rendered_about_the_budgets_worth(hub, monkeypatch):
    """Refusing an over-budget ranking costs about the budget's worth of work: candidates are checked,
    rendered and counted one at a time, and the count stops where it passes the budget. A plan under
    its budget renders what recommend.render renders."""
    from adapterhub import checks, prompts, ranking, recommend
    publish_random(hub, "news")
    candidates = [f"thing {i}" for i in range(400)] + ["bad \udcff"]  # a bad title past the budget
    whole = ranking.plan(hub, "news", HISTORY, candidates[:-1])
    assert whole.plan.suffixes == recommend.render(whole.plan.scenario, None, HISTORY, candidates[:-1])[1]
    rendered = []
    render_candidate = prompts.render_candidate
    monkeypatch.setattr(prompts, "render_candidate", lambda *a, **kw: rendered.append(a[1]) or render_candidate(*a, **kw))
    budget = whole.tokens // 10
    with pytest.raises(checks.OverBudget):
        ranking.plan(hub, "news", HISTORY, candidates, max_tokens=budget)
    assert 0 < len(rendered) <= len(candidates) // 8   # about a tenth of them, not all 401
    with pytest.raises(DataError, match=r"candidates\[400\]"):   # within the budget the bad title is refused by name
        ranking.plan(hub, "news", HISTORY, candidates)


def test_a_candidate_is_tokenized_once_and_gets_the_tokenizers_ids(hub, monkeypatch):
    """Candidate texts' token ids are kept (a catalog's items recur in every ranking): a second plan of
    the same candidates does not call the tokenizer for them, and the ids are the tokenizer's own.
    A text longer than checks.SUFFIX_CHARS is tokenized each time, and the cache is bounded."""
    from adapterhub import checks, ranking
    publish_random(hub, "news")
    first = ranking.plan(hub, "news", HISTORY, CANDIDATES)
    calls = []
    encode = hub.tokenizer.encode
    monkeypatch.setattr(hub.tokenizer, "encode", lambda text, **kw: calls.append(text) or encode(text, **kw))
    again = ranking.plan(hub, "news", HISTORY, CANDIDATES)
    assert again.groups == first.groups
    assert len(calls) == 1   # the history prefix only: the candidates came from the cache
    texts = again.plan.suffixes
    assert [s for _, ss in again.groups for s in ss] == [encode(t, add_special_tokens=False) for t in texts]
    long = "thing " * (checks.SUFFIX_CHARS // 6 + 1)
    for _ in range(2):
        assert checks.encode_row(hub, long, "candidates[0]", False) == encode(long, add_special_tokens=False)
    assert calls.count(long) == 2
    assert hub._suffix_ids.cache_info().maxsize == checks.SUFFIX_CACHE
