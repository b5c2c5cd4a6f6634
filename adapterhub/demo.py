"""`adapterhub demo`: the main job on the embedded base, needing no data folder.

1. load the base once; 2. load the four shipped adapters by name and recommend for example users
(histories written here); 3. train -> publish -> load a small adapter on a built-in example.
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from .datasets.common import Example, Item, ScenarioData

USERS = {
    "video": (["Star Wars (1977)", "Empire Strikes Back, The (1980)", "Raiders of the Lost Ark (1981)",
               "Terminator, The (1984)", "Aliens (1986)"],
              ["Return of the Jedi (1983)", "Sense and Sensibility (1995)", "Die Hard (1988)",
               "Sleepless in Seattle (1993)", "Alien (1979)", "Emma (1996)"]),
    "news": (["NFL Week 8 takeaways: what we learned", "Astros fire assistant GM after clubhouse comments",
              "NBA season preview: the biggest questions"],
             ["Patriots stay unbeaten with win over Browns", "10 easy weeknight dinners", "Stocks edge higher as earnings roll in",
              "LeBron James leads Lakers past Mavericks", "How to keep houseplants alive in winter"]),
    "music": (["Metallica (tags: thrash metal, metal, hard rock)", "Iron Maiden (tags: heavy metal, metal, nwobhm)",
               "Megadeth (tags: thrash metal, metal, speed metal)"],
              ["Slayer (tags: thrash metal, metal, speed metal)", "Enya (tags: new age, celtic, ambient)",
               "Judas Priest (tags: heavy metal, metal, hard rock)", "Britney Spears (tags: pop, dance, female vocalists)",
               "Norah Jones (tags: jazz, female vocalists, chillout)"]),
    "ecommerce": (["3D Printer PLA Filament 1.75mm Black 1kg", "Digital Caliper 0-6 inch Stainless Steel",
                   "3D Printer Nozzle Cleaning Kit"],
                  ["PETG 3D Printer Filament 1.75mm 1kg Spool", "Nitrile Disposable Gloves, 100 Count",
                   "Super Glue, 12-Pack", "Glass Print Bed for 3D Printer", "Lab Safety Goggles"]),
}

TOPICS = {"science": ["Space Shuttle Stories", "The Physics Hour", "Chemistry in the Kitchen", "Deep Sea Biology",
                      "Quantum Weekly", "Astronomy Tonight"],
          "comedy": ["Laugh Track Live", "Stand-up Sundays", "Improv Hour", "Sketch Club", "Funny Business Show",
                     "The Prank Podcast"]}


def example_data(seed: int = 0) -> ScenarioData:
    """A built-in 'podcasts' scenario: half the users like science shows, half comedy."""
    rng = random.Random(seed)
    items = {f"{t}{i}": Item(f"{t}{i}", name, t) for t, names in TOPICS.items() for i, name in enumerate(names)}
    splits: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for u in range(48):
        fav = "science" if u % 2 else "comedy"
        liked = [i for i in items if items[i].category == fav]
        split = "train" if u < 32 else ("valid" if u < 40 else "test")
        for _ in range(4):
            hist = tuple(rng.sample(liked, 3))
            cand = rng.choice([i for i in items if i not in hist])
            splits[split].append(Example(f"u{u}", hist, cand, int(items[cand].category == fav)))
    return ScenarioData("podcasts", "built-in example", items, splits, sha256="built-in", task="pointwise")


def shipped_registry(path: str) -> Path:
    """The registry named on the command line, else the repo's own adapters/ folder."""
    p = Path(path)
    if p.is_dir():
        return p
    return Path(__file__).resolve().parent.parent / "adapters"


def ensure_facts(registry, key: str, card: dict) -> str:
    """The shipped adapters' facts are data, so a clone lacks them (README, Shipped adapters):
    rebuild them from the data folder when it is here. -> a line to print ('' when nothing to do)."""
    import inspect
    from .datasets import SOURCES, default_data_dir, load
    from .train import rebuild_facts
    if "facts.json" not in (card.get("files") or {}) or (registry.resolve(key) / "facts.json").exists():
        return ""
    scenario = card.get("scenario")
    if default_data_dir() is None or scenario not in SOURCES:
        return "  (its facts are not here and there is no data folder: ranked without them)"
    if card["data"].get("load"):  # the card says how its data was loaded
        tries = [card["data"]["load"]]
    else:  # older cards (the v2s): try the loader's on/off options (news@v2 has full_train)
        flags = [p for p, v in inspect.signature(SOURCES[scenario][0].load).parameters.items() if v.default is False]
        tries = [{"options": o} for o in [{}] + [{f: True} for f in flags]]
    for args in tries:
        data = load(scenario, seed=args.get("seed", 0), n_candidates=args.get("n_candidates", 20),
                    max_examples=args.get("max_examples"), options=args.get("options") or None)
        if data.sha256 == card["data"]["sha256"]:
            return f"  (rebuilt its facts from the data folder: {rebuild_facts(registry, key, data)})"
    return "  (its facts are not here and the data folder holds other data: ranked without them)"


def run_demo(args) -> int:
    from .config import TrainConfig
    from .hub import Hub
    from .registry import Registry

    t0 = time.perf_counter()
    registry = Registry(shipped_registry(args.registry))
    hub = Hub(base=args.base, registry=registry, quant=args.quant, device=args.device)
    print(f"base {hub.base.spec} ({hub.base.quant}, {hub.device}) loaded in {hub.base.load_s:.1f} s; "
          f"fingerprint {hub.fingerprint}")
    shipped = [c for c in registry.list() if c["name"] in USERS]
    if not shipped:
        print(f"no shipped adapters in {registry.root}/ (expected: {', '.join(USERS)})")
    for card in shipped:
        name = card["name"]
        note = ensure_facts(registry, f"{name}@{card['current']}", card=registry.card(name))
        t = time.perf_counter()
        adapter = hub.load(name)
        load_ms = 1000 * (time.perf_counter() - t)
        history, candidates = USERS[name]
        t = time.perf_counter()
        ranked = adapter.recommend(history, candidates, k=len(candidates))
        print(f"\n[{adapter.key}] scenario {adapter.scenario}; loaded in {load_ms:.0f} ms, "
              f"ranked {len(candidates)} candidates in {time.perf_counter() - t:.1f} s")
        if note:
            print(note)
        print("  history: " + "; ".join(history))
        for rank, (item, score) in enumerate(ranked, 1):
            print(f"  {rank}. {score:.3f}  {item}")

    print("\n[train -> publish -> load] a small adapter on the built-in 'podcasts' example")
    data = example_data()
    with tempfile.TemporaryDirectory(prefix="adapterhub-demo-") as tmp:
        demo_hub = Hub(base=hub.base, registry=Path(tmp) / "adapters")  # same base, a scratch registry
        cfg = TrainConfig(max_steps=args.train_steps, batch_size=4, eval_every=max(1, args.train_steps // 3),
                          lr=2e-3, n_valid=32, n_test=32, patience=10)
        t = time.perf_counter()
        # force: publish even if it loses to the base, so the demo can show (and say) so
        adapter, card = demo_hub.train("podcasts", data, cfg, progress=None, force=True)
        print(f"  trained {cfg.max_steps} steps in {time.perf_counter() - t:.0f} s; published {adapter.key} to {tmp}/adapters")
        for entry in card["train"]["log"]:
            print(f"  step {entry['step']}: loss {entry['loss']:.3f}, val_auc {entry['val_auc']:.3f}")
        test = card["metrics"]["test"]
        print("  test AUC: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in test.items()))
        for mine in ("adapter", "adapter (fused)"):
            if mine in test:
                ours, base = test[mine]["auc"], test["base"]["auc"]
                print(f"  the {mine} {'beats' if ours > base else 'does NOT beat'} the bare base on test AUC "
                      f"({ours:.3f} vs {base:.3f}, {len(data.splits['test'])} test examples)")
        demo_hub.unload("podcasts")
        again = demo_hub.load("podcasts")  # by name, from the registry
        history = [data.items[i].text for i in ("science0", "science1", "science2")]
        ranked = again.recommend(history, ["Astronomy Tonight", "Improv Hour", "Deep Sea Biology", "Sketch Club"], k=4)
        print(f"  {again.key} loaded by name; history {history}:")
        for rank, (item, score) in enumerate(ranked, 1):
            print(f"  {rank}. {score:.3f}  {item}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    return 0
