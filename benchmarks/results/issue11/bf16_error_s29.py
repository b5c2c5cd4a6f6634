"""Issue 11, 2026-11-30 (second session): do the packed Llama attention forward (packing.packed_self_attention:
rotary in three kernels, no transposes) and the last layer's MLP on read tokens only (packing.packed_last_layer)
change compute='bf16''s error? P(yes) under one random r=8 adapter, bf16 compute with the new forwards ("new")
and with transformers' own attention and layer forwards ("old"), each against fp32 compute (new forwards; exact
to 1e-6 against the old) over the same NF4 values, the first N test users/impressions, at most 20 candidates each.

    ADAPTERHUB_DATA=../shared/data python benchmarks/results/issue11/bf16_error_s29.py news 10

Output: bf16_error_s29.txt"""
import sys, tempfile
from pathlib import Path
from adapterhub.bench.training import load_data
from adapterhub.bench.common import publish_random_adapters
from adapterhub.hub import Hub
from adapterhub import prompts
scen = sys.argv[1]; n_users = int(sys.argv[2])
data = load_data(scen)
test = data.splits["test"]
users = []
for ex in test:
    g = ex.group or ex.user
    if g not in [u for u, _ in users]:
        users.append((g, ex))
    if len(users) == n_users: break
cases = []
for g, ex in users:
    group = [e for e in test if (e.group or e.user) == g][:20]
    prefix, _ = prompts.render(data.scenario, ex, data.items)
    cases.append((prefix, [prompts.render(data.scenario, c, data.items)[1] for c in group]))
reg = Path(tempfile.mkdtemp()) / "a"
hubs = {c: Hub(base="smollm2-135m", registry=reg, compute=c) for c in ("fp32", "bf16")}
name = publish_random_adapters(hubs["fp32"], 1, r=8)[0]
keys = {c: h.load(name).key for c, h in hubs.items()}
layers = hubs["bf16"].decoder.layers
new = [(m, m.forward) for m in [l.self_attn for l in layers] + [layers[-1]]]
err = {"new": [], "old": []}
for prefix, sufs in cases:
    ref = hubs["fp32"].score_candidates(keys["fp32"], prefix, sufs, batch_size=20)
    for mode in ("new", "old"):
        for m, f in new:
            if mode == "new":
                m.forward = f
            elif "forward" in m.__dict__:
                del m.forward
        got = hubs["bf16"].score_candidates(keys["bf16"], prefix, sufs, batch_size=20)
        err[mode] += [abs(a - b) for a, b in zip(got, ref)]
for mode, e in err.items():
    e = sorted(e)
    print(f"{scen} {mode} n {len(e)} mean {sum(e) / len(e):.4f} p95 {e[int(0.95 * (len(e) - 1))]:.4f} max {e[-1]:.4f}")
