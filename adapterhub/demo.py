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

# Each example user's history and candidates, as item dicts of a small built-in catalog
# (adapterhub.catalog.FIELDS), so the shipped adapters see facts, as they were trained to. The
# titles are well-known public items; the categories are ours and the popularity and like-rate
# figures are illustrative, not measured.
def _items(rows, keys):
    """(text, value per key, ...) rows -> item dicts whose id is their text."""
    return [{"id": r[0], "text": r[0], **dict(zip(keys, r[1:]))} for r in rows]


_V = ("category", "popularity", "like_rate")
_N = ("category", "subcategory", "popularity")
_M = ("category", "tags", "popularity")
_E = ("category", "popularity")
USERS = {
    "video": (_items([("Star Wars (1977)", "Action|Adventure|Sci-Fi", 580, 0.91),
                      ("Empire Strikes Back, The (1980)", "Action|Adventure|Sci-Fi", 360, 0.88),
                      ("Raiders of the Lost Ark (1981)", "Action|Adventure", 420, 0.9),
                      ("Terminator, The (1984)", "Action|Sci-Fi|Thriller", 300, 0.82),
                      ("Aliens (1986)", "Action|Sci-Fi|Thriller", 280, 0.85)], keys=_V),
              _items([("Return of the Jedi (1983)", "Action|Adventure|Sci-Fi", 500, 0.84),
                      ("Sense and Sensibility (1995)", "Drama|Romance", 260, 0.8),
                      ("Die Hard (1988)", "Action|Thriller", 240, 0.79),
                      ("Sleepless in Seattle (1993)", "Comedy|Romance", 210, 0.62),
                      ("Alien (1979)", "Horror|Sci-Fi|Thriller", 290, 0.86),
                      ("Emma (1996)", "Comedy|Drama|Romance", 120, 0.66)], keys=_V)),
    "news": (_items([("NFL Week 8 takeaways: what we learned", "sports", "football_nfl", 40),
                     ("Astros fire assistant GM after clubhouse comments", "sports", "baseball_mlb", 25),
                     ("NBA season preview: the biggest questions", "sports", "basketball_nba", 18)], keys=_N),
             _items([("Patriots stay unbeaten with win over Browns", "sports", "football_nfl", 60),
                     ("10 easy weeknight dinners", "foodanddrink", "recipes", 30),
                     ("Stocks edge higher as earnings roll in", "finance", "markets", 12),
                     ("LeBron James leads Lakers past Mavericks", "sports", "basketball_nba", 45),
                     ("How to keep houseplants alive in winter", "lifestyle", "lifestylehomeandgarden", 8)],
                    keys=_N)),
    "music": (_items([("Metallica (tags: thrash metal, metal, hard rock)", "thrash metal",
                       ["thrash metal", "metal", "hard rock"], 90),
                      ("Iron Maiden (tags: heavy metal, metal, nwobhm)", "heavy metal", ["heavy metal", "metal", "nwobhm"], 70),
                      ("Megadeth (tags: thrash metal, metal, speed metal)", "thrash metal",
                       ["thrash metal", "metal", "speed metal"], 40)], keys=_M),
              _items([("Slayer (tags: thrash metal, metal, speed metal)", "thrash metal",
                       ["thrash metal", "metal", "speed metal"], 35),
                      ("Enya (tags: new age, celtic, ambient)", "new age", ["new age", "celtic", "ambient"], 20),
                      ("Judas Priest (tags: heavy metal, metal, hard rock)", "heavy metal",
                       ["heavy metal", "metal", "hard rock"], 30),
                      ("Britney Spears (tags: pop, dance, female vocalists)", "pop", ["pop", "dance", "female vocalists"], 150),
                      ("Norah Jones (tags: jazz, female vocalists, chillout)", "jazz",
                       ["jazz", "female vocalists", "chillout"], 45)], keys=_M)),
    "ecommerce": (_items([("3D Printer PLA Filament 1.75mm Black 1kg", "Filaments", 30),
                          ("Digital Caliper 0-6 inch Stainless Steel", "Measuring Tools", 12),
                          ("3D Printer Nozzle Cleaning Kit", "3D Printer Parts", 6)], keys=_E),
                  _items([("PETG 3D Printer Filament 1.75mm 1kg Spool", "Filaments", 25),
                          ("Nitrile Disposable Gloves, 100 Count", "Gloves", 40),
                          ("Super Glue, 12-Pack", "Adhesives", 15),
                          ("Glass Print Bed for 3D Printer", "3D Printer Parts", 4),
                          ("Lab Safety Goggles", "Eye Protection", 9)], keys=_E)),
}


def demo_catalog(scenario: str) -> dict:
    """The built-in catalog of a scenario's example user: their items' facts."""
    from .catalog import from_items
    history, candidates = USERS[scenario]
    return from_items(history + candidates, scenario)


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
        t = time.perf_counter()
        adapter = hub.load(name)
        load_ms = 1000 * (time.perf_counter() - t)
        history, candidates = USERS[name]
        t = time.perf_counter()
        # the built-in catalog gives every item its facts, as the adapter saw them in training
        ranked = adapter.recommend(history, candidates, k=len(candidates), catalog=demo_catalog(name))
        print(f"\n[{adapter.key}] scenario {adapter.scenario}; loaded in {load_ms:.0f} ms, "
              f"ranked {len(candidates)} candidates in {time.perf_counter() - t:.1f} s "
              "(item facts from the demo's built-in catalog; its popularity figures are illustrative)")
        print("  history: " + "; ".join(h["text"] for h in history))
        for rank, (item, score) in enumerate(ranked, 1):
            print(f"  {rank}. {score:.3f}  {item['text']}")

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
