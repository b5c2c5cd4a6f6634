"""How far can prefix reuse alone take the ranking ratio? Token counts of the prompts that
`python -m adapterhub.bench.training --modes ""` ranks (one test user's 20 candidates per scenario):
ours runs the prefix once plus every suffix, and the suffixes' common lead once,
in the prefix (packing.share_leading); the PEFT loop runs 20 full prompts, padded to the longest.
Tokenizer only (no model). Output: benchmarks/ranking_speed/token_counts.txt"""
from transformers import AutoTokenizer

from adapterhub.base import cache_dir
from adapterhub.bench.training import load_data, ranking_case
from adapterhub.packing import share_leading

tok = AutoTokenizer.from_pretrained(cache_dir() / "bases" / "smollm2-135m")  # converted once by any first base use
print("scenario | prefix tokens | mean suffix | common lead | ours before lead sharing | ours | "
      "PEFT (20 full, padded) | token ratio before | token ratio")
for sc in ("music", "news", "video"):
    prefix, suffixes = ranking_case(load_data(sc))  # the same user and candidates as the bench's score rows
    p = tok.encode(prefix)
    s = [tok.encode(x, add_special_tokens=False) for x in suffixes]  # as the hub encodes them: apart
    shared_p, shared_s = share_leading(p, s)
    before, ours = len(p) + sum(map(len, s)), len(shared_p) + sum(map(len, shared_s))
    peft = len(s) * (len(p) + max(map(len, s)))
    print(f"{sc} | {len(p)} | {sum(map(len, s)) / len(s):.1f} | {len(shared_p) - len(p)} | {before} | {ours} | "
          f"{peft} | {peft / before:.2f}x | {peft / ours:.2f}x")
