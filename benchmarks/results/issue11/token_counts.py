"""Issue 11: how far can prefix reuse alone take the ranking ratio? Token counts of the prompts that
`python -m adapterhub.bench.training --modes ""` ranks (one test user's 20 candidates per scenario):
ours runs the prefix once plus every suffix; the PEFT loop runs 20 full prompts, padded to the longest.
Tokenizer only (no model). Output: benchmarks/results/issue11/token_counts.txt"""
from transformers import AutoTokenizer

from adapterhub import prompts
from adapterhub.base import cache_dir
from adapterhub.bench.training import candidates, load_data

tok = AutoTokenizer.from_pretrained(cache_dir() / "bases" / "smollm2-135m")  # converted once by any first base use
print("scenario | prefix tokens | mean suffix | ours (prefix once) | PEFT (20 full, padded) | token ratio")
for sc in ("music", "news", "video"):
    data = load_data(sc)
    ex = data.splits["test"][0]  # the same user and candidates as bench.training's child_score
    group = [e for e in data.splits["test"] if (e.group or e.user) == (ex.group or ex.user)][:20]
    cands = group + candidates(data, 20 - len(group)) if len(group) < 20 else group
    prefix, _ = prompts.render(data.scenario, ex, data.items)
    suffixes = [prompts.render(data.scenario, c, data.items)[1] for c in cands]
    p = len(tok.encode(prefix))
    s = [len(tok.encode(prefix + x)) - p for x in suffixes]
    ours, peft = p + sum(s), len(s) * (p + max(s))
    print(f"{sc} | {p} | {sum(s) / len(s):.1f} | {ours} | {peft} | {peft / ours:.2f}x")
