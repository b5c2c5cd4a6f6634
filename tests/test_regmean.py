"""RegMean merges: the per-module least-squares solve, the input Grams it is fit on, and
`merge(method="regmean")` end to end, with each parent's train data."""
import pytest
import torch

from adapterhub import regmean
from adapterhub import train as train_mod
from adapterhub.config import TrainConfig
from adapterhub.errors import ConfigError
from adapterhub.merge import merge_tensors, read_pairs

from conftest import publish_random, toy_data


def gram(x):
    return x.T @ x / len(x)


def test_solve_keeps_each_parents_delta_on_its_own_inputs():
    g = torch.Generator().manual_seed(0)
    A1, A2 = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    B1, B2 = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    d1, d2 = B1 @ A1, B2 @ A2
    X1 = torch.cat([torch.randn(50, 3, generator=g), torch.zeros(50, 3)], 1)  # inputs in dims 0-2 ...
    X2 = torch.cat([torch.zeros(50, 3), torch.randn(50, 3, generator=g)], 1)  # ... and in dims 3-5
    G1, G2 = gram(X1), gram(X2)
    A, B = regmean.solve([(A1, B1, G1), (A2, B2, G2)], [G1, G2], alpha=1.0)
    assert A.shape == (4, 6) and B.shape == (4, 4)  # the cat form: rank 2 + 2
    d = B @ A
    assert torch.allclose(X1 @ d.T, X1 @ d1.T, atol=1e-4)  # each scenario sees its own delta ...
    assert torch.allclose(X2 @ d.T, X2 @ d2.T, atol=1e-4)
    assert not torch.allclose(X1 @ (d1 + d2).T, X1 @ d1.T, atol=1e-1)  # ... where the sum adds the other's
    # the same inputs for both: the least-squares answer is the average of the deltas
    X = torch.randn(80, 6, generator=g)
    A, B = regmean.solve([(A1, B1, gram(X)), (A2, B2, gram(X))], [gram(X), gram(X)], alpha=1.0)
    assert torch.allclose(B @ A, (d1 + d2) / 2, atol=1e-4)
    # alpha < 1 shrinks the off-diagonal entries: a different, still finite answer
    A9, B9 = regmean.solve([(A1, B1, gram(X)), (A2, B1, gram(X1))], [gram(X), gram(X1)], alpha=0.5)
    assert torch.isfinite(B9 @ A9).all()


def test_merge_tensors_regmean_is_the_closed_form_and_counts_a_parent_without_the_module(hub):
    publish_random(hub, "a", r=2, seed=1)
    publish_random(hub, "b", r=3, seed=2, targets=["q_proj"])  # b has no delta on v_proj
    (pa, sa, _, _), (pb, sb, _, _) = read_pairs(hub.registry, "a"), read_pairs(hub.registry, "b")
    g = torch.Generator().manual_seed(3)
    paths = sorted(pa)
    grams = [{p: gram(torch.randn(40, hub.wrapped[p].in_features, generator=g)) for p in paths} for _ in range(2)]
    tensors, rank = merge_tensors([(pa, sa, 1.0), (pb, sb, 3.0)], "regmean", grams=grams, regmean_alpha=1.0)
    assert rank == 5
    for path in paths:
        A = tensors[f"base_model.model.{path}.lora_A.weight"]
        B = tensors[f"base_model.model.{path}.lora_B.weight"]
        Ga, Gb = grams[0][path], 3.0 * grams[1][path]  # a weight scales its parent's Gram
        want = sa * pa[path][1] @ pa[path][0] @ Ga
        if path in pb:
            want = want + sb * pb[path][1] @ pb[path][0] @ Gb
        want = want @ torch.linalg.inv(Ga + Gb)  # b's inputs count where it has no delta, too
        assert torch.allclose(B @ A, want, atol=1e-3 * want.abs().max())
    with pytest.raises(ConfigError, match="Gram"):
        merge_tensors([(pa, sa, 1.0), (pb, sb, 1.0)], "regmean")
    with pytest.raises(ConfigError, match="regmean_alpha"):
        merge_tensors([(pa, sa, 1.0), (pb, sb, 1.0)], "regmean", grams=grams, regmean_alpha=1.5)


def test_input_grams_count_each_real_token_once_and_no_pad(hub):
    publish_random(hub, "a", r=2, seed=1)
    key = hub.load("a").key
    prompts = [hub.encode(t) for t in ("red thing one", "a blue thing two and more", "x")]
    encoded = [(p[:-1], p[-1:]) for p in prompts]  # distinct prefixes: every token counted once
    path = sorted(read_pairs(hub.registry, "a")[0])[0]
    got = regmean.input_grams(hub, key, encoded, [path])[path]
    seen = []
    handle = hub.wrapped[path].register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        with torch.no_grad(), hub.use("a") as model:
            for p in prompts:  # each prompt alone, unpacked
                model(input_ids=torch.tensor([p]))
    finally:
        handle.remove()
    want = gram(torch.cat(seen).float())
    assert torch.allclose(got, want, atol=1e-4 * want.abs().max())


DATA = {"toy": toy_data(scenario="toy"), "books": toy_data(n_users=18, seed=1, scenario="books")}


def test_regmean_merge_end_to_end(hub, monkeypatch):
    for name, data in DATA.items():
        hub.train(name, data, TrainConfig(max_steps=4, eval_every=4, batch_size=8, lr=5e-3), progress=False, force=True)
    monkeypatch.setattr(train_mod, "load_card_data", lambda card, path=None: DATA[card["scenario"]])
    adapter = hub.merge({"toy": 1.0, "books": 1.0}, method="regmean", name="tb")
    card = adapter.card
    assert card["merge"]["method"] == "regmean" and card["lora"]["r"] == 16
    assert card["merge"]["regmean"]["alpha"] == 0.9
    assert set(card["merge"]["kept"]) == {"toy", "books"} and "kept" in card["merge"]["kept"]["toy"]
    # the published weights are the solve over Grams of each parent's own train prompts
    pairs = [read_pairs(hub.registry, r) for r in ("toy", "books")]
    paths = sorted(pairs[0][0])
    grams = [regmean.parent_grams(hub, r, hub.registry.card(r), paths) for r in ("toy@v1", "books@v1")]
    want, _ = merge_tensors([(p, s, 1.0) for p, s, _, _ in pairs], "regmean", grams=grams)
    merged, _, _, _ = read_pairs(hub.registry, "tb")
    for path in paths:
        k = f"base_model.model.{path}.lora_"
        d = want[k + "B.weight"] @ want[k + "A.weight"]
        assert torch.allclose(merged[path][1] @ merged[path][0], d, atol=1e-2 * d.abs().max())
    # with no method named, regmean is the default; the same merge, with the weights' default rule
    default = hub.merge(["toy", "books"], name="tb-default", measure=False)
    assert default.card["merge"]["method"] == "regmean" and "fallback" not in default.card["merge"]
    again, _, _, _ = read_pairs(hub.registry, "tb-default")
    assert all(torch.allclose(again[p][1] @ again[p][0], merged[p][1] @ merged[p][0], atol=1e-6) for p in paths)
    # a parent without training data (here: random weights, no card record), named by the caller, is
    # refused by name (the default falls back to cat instead: test_merge_measure.py)
    publish_random(hub, "rnd", r=8)
    with pytest.raises(ConfigError, match="rnd@v1"):
        hub.merge({"toy": 1.0, "rnd": 1.0}, method="regmean", name="bad")
    assert "bad" not in hub.registry.names()
