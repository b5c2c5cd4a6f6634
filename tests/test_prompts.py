from adapterhub.datasets import Example, Item
from adapterhub.prompts import ANSWERS, MAX_HISTORY, render, render_candidate, render_history

ITEMS = {f"m{i}": Item(f"m{i}", f"Movie {i}") for i in range(15)}
ITEMS["long"] = Item("long", " ".join(f"w{i}" for i in range(20)))


def test_video_prompt_exact():
    ex = Example("u", ("m0", "m1"), "m3", 1, disliked=("m2",))
    prefix, suffix = render("video", ex, ITEMS)
    assert prefix == ('The user watched and liked these movies, oldest first: "Movie 0", "Movie 1".\n'
                      'The user disliked: "Movie 2".')
    assert suffix == '\nWill the user like the movie "Movie 3"? Answer:'
    assert ANSWERS == (" Yes", " No")


def test_prefix_is_shared_by_all_candidates():
    a = render("news", Example("u", ("m0",), "m1", 1), ITEMS)
    b = render("news", Example("u", ("m0",), "m2", 0), ITEMS)
    assert a[0] == b[0] and a[1] != b[1]
    assert a[1].startswith("\n") and a[1].endswith("Answer:")


def test_scenario_verbs_and_generic_fallback():
    ex = Example("u", ("m0",), "m1", 1)
    for scenario, words in [("ecommerce", ("bought", "buy")), ("news", ("clicked", "click")),
                            ("music", ("listened to", "listen to")), ("podcasts", ("interacted with", "interact with"))]:
        prefix, suffix = render(scenario, ex, ITEMS)
        assert words[0] in prefix and words[1] in suffix


def test_history_truncation_and_empty_history():
    ex = Example("u", tuple(f"m{i}" for i in range(15)), "long", 1)
    prefix, suffix = render("music", ex, ITEMS)
    assert prefix.count('"') == 2 * MAX_HISTORY and '"Movie 4"' not in prefix and '"Movie 5"' in prefix
    assert '"w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 ..."' in suffix
    assert render_history("video", []) == "The user has no history yet."
    assert render_candidate("video", "T") == '\nWill the user like the movie "T"? Answer:'


# ---------------------------------------------------------------- facts in the prompt
import pytest  # noqa: E402

from adapterhub import facts as F  # noqa: E402
from adapterhub.datasets import ScenarioData  # noqa: E402


def test_facts_none_gives_todays_prompts_byte_for_byte():
    ex = Example("u", tuple(f"m{i}" for i in range(12)), "m3", 1, disliked=("m13", "long"))
    for scenario in ("video", "news", "ecommerce", "music", "podcasts"):
        assert render(scenario, ex, ITEMS, facts=None) == render(scenario, ex, ITEMS)
        prefix, suffix = render(scenario, ex, ITEMS)
        texts = [ITEMS[i].text for i in ex.history]
        assert render_history(scenario, texts, [ITEMS[i].text for i in ex.disliked], facts=None) == prefix
        assert render_candidate(scenario, "Movie 3", facts=None) == suffix
    assert render("video", ex, ITEMS)[0] == (
        'The user watched and liked these movies, oldest first: ' + ", ".join(f'"Movie {i}"' for i in range(2, 12))
        + '.\nThe user disliked: "Movie 13", "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 ...".')


def scenario_data(scenario):
    """Two train users; a shaped like the real loaders' extras; item 'z' is in the items only."""
    cats = {"video": ["Action|Crime", "Crime", "Comedy", "Action"], "news": ["sports", "sports", "tv", "sports"],
            "ecommerce": ["Stanley", "Stanley", "3M", "Stanley"], "music": ["rock", "pop", "rock", "jazz"],
            "podcasts": ["true crime", "true crime", "comedy", "true crime"]}[scenario]
    texts = ["Heat (1995)", "Se7en (1995)", "Clue (1985)", "Speed (1994)"]
    items = {f"i{k}": Item(f"i{k}", texts[k], cats[k]) for k in range(4)}
    items["z"] = Item("z", "Brand new thing", "")
    train = [Example("u1", ("i0", "i1"), "i3", 1, ("i2",)), Example("u2", ("i0",), "i2", 1),
             Example("u2", ("i0",), "i1", 0)]
    extra = {"video": {"like_rate": {"i0": 0.71, "i1": 0.8, "i2": 0.3, "i3": 0.5}, "global_like_rate": 0.55},
             "news": {"subcategory": {"i0": "nfl", "i1": "nba", "i3": "nfl"}},
             "music": {"tags": {"i0": ["rock", "indie"], "i1": ["pop"], "i2": ["rock"], "i3": ["jazz", "indie"]}}
             }.get(scenario, {})
    return ScenarioData(scenario, "toy", items, {"train": train, "valid": [], "test": []}, "x", "pointwise", extra)


EXPECTED = {   # history items show their category only; the candidate shows all its facts
    "video": ('The user watched and liked these movies, oldest first: "Heat (1995)" (Action, Crime), "Se7en (1995)" '
              '(Crime).\nThe user disliked: "Clue (1985)" (Comedy).\nThe user liked 67% of the movies they rated.',
              '\nWill the user like the movie "Speed (1994)" (Action; liked by 50% of viewers; top 25% popular)? '
              'It shares a genre with 1 of the 2 liked movies. Answer:'),
    "news": ('The user clicked these news articles, oldest first: "Heat (1995)" (sports/nfl), "Se7en (1995)" '
             '(sports/nba).',
             '\nWill the user click the news article "Speed (1994)" (sports/nfl; top 25% popular)? Same category '
             'as 2 of the 2 clicked articles, same subcategory as 1. Answer:'),
    "ecommerce": ('The user bought these products, oldest first: "Heat (1995)" (brand Stanley), "Se7en (1995)" '
                  '(brand Stanley).',
                  '\nWill the user buy the product "Speed (1994)" (brand Stanley; top 25% popular)? Same brand as 2 '
                  'of the 2 bought products. Answer:'),
    "music": ('The user listened to these artists, oldest first: "Heat (1995)", "Se7en (1995)".',   # tags: in the text
              '\nWill the user listen to the artist "Speed (1994)" (top 25% popular)? It shares a tag with 1 of the '
              '2 artists. Answer:'),
    "podcasts": ('The user interacted with these items, oldest first: "Heat (1995)" (true crime), "Se7en (1995)" '
                 '(true crime).',
                 '\nWill the user interact with the item "Speed (1994)" (true crime; top 25% popular)? Same '
                 'category as 2 of the 2 items. Answer:'),
}


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_facts_prompt_per_scenario(scenario):
    data = scenario_data(scenario)
    facts = F.compute(data)
    disliked = ("i2",) if scenario == "video" else ()
    ex = Example("t", ("i0", "i1"), "i3", 1, disliked)
    assert render(scenario, ex, data.items, facts=facts) == EXPECTED[scenario]
    # the same prompt from ids, or from titles (any case), through render_history / render_candidate
    prefix = render_history(scenario, ["i0", "se7en (1995)"], [data.items[i].text for i in disliked], facts=facts)
    assert prefix == EXPECTED[scenario][0]
    assert render_candidate(scenario, "SPEED (1994)", facts=facts, history=["i0", "i1"]) == EXPECTED[scenario][1]
    # the prefix is the same for every candidate of the user
    other = render(scenario, Example("t", ("i0", "i1"), "i2", 0, disliked), data.items, facts=facts)
    assert other[0] == EXPECTED[scenario][0] and other[1] != EXPECTED[scenario][1]


def test_unknown_items_render_as_new():
    data = scenario_data("news")
    facts = F.compute(data)
    assert render_history("news", ["i0", "A headline nobody saw"], facts=facts) == (
        'The user clicked these news articles, oldest first: "Heat (1995)" (sports/nfl), '
        '"A headline nobody saw" (new item).')
    assert render_candidate("news", "Fresh story", facts=facts, history=["i0"]) == (
        '\nWill the user click the news article "Fresh story" (new item)? Answer:')
    # an item of the data that the facts do not hold (facts from other data) is new, never an error
    ex = Example("t", ("i0",), "i1", 1)
    old_facts = {"items": {"i0": facts["items"]["i0"]}}
    assert render("news", ex, data.items, facts=old_facts)[1] == (
        '\nWill the user click the news article "Se7en (1995)" (new item)? Answer:')
    # an item without train interactions is a new item (facts format 2; format 1 said "unpopular");
    # empty history: no counts sentence
    assert render_candidate("news", "z", facts=facts) == (
        '\nWill the user click the news article "Brand new thing" (new item)? Answer:')
    assert render_candidate("news", "z", facts={**facts, "format": 1}) == (
        '\nWill the user click the news article "Brand new thing" (unpopular)? Answer:')
    assert render_history("video", [], ["i2"], facts=F.compute(scenario_data("video"))).endswith(
        "\nThe user liked 0% of the movies they rated.")
