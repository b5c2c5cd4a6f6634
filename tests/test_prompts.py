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
