"""Does a change to the packed forward change compute='bf16''s error? P(yes) under one random r=8
adapter, bf16 compute with and without the change, each against fp32 compute over the same NF4 values (exact
arithmetic, what the NF4 kernels compute on CPU), the first N test users/impressions, at most 20 candidates each.
The change (third argument):
  lead     sharing a group's suffix lead (packing.share_leading): "share" vs "noshare"
  forward  the Llama attention forward for packed rows and the last layer's MLP on read tokens only
           (packing.packed_self_attention, packing.packed_last_layer): "new" vs "old" (transformers' own
           forwards); fp32 runs the new ones (equal to the old to 1.4e-6)

    ADAPTERHUB_DATA=../shared/data python benchmarks/ranking_speed/bf16_error.py news 10 [lead|forward]

Output (music, news, video, 10 each): bf16_error_lead.txt, bf16_error_forward.txt"""
import sys, tempfile
from pathlib import Path
from adapterhub.bench.common import publish_random_adapters
from adapterhub.bench.training import load_data
from adapterhub.hub import Hub
from adapterhub import packing, prompts
scen = sys.argv[1]; n_users = int(sys.argv[2]); what = sys.argv[3] if len(sys.argv) > 3 else "lead"
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
orig = packing.share_leading
layers = hubs["bf16"].decoder.layers
forwards = [(m, m.forward) for m in [layer.self_attn for layer in layers] + [layers[-1]]]


def use(mode):
    """Set the bf16 hub to one side of the comparison."""
    packing.share_leading = (lambda p, s: (p, s)) if mode == "noshare" else orig
    for m, f in forwards:
        if mode != "old":
            m.forward = f
        elif "forward" in m.__dict__:
            del m.forward  # transformers' own forward again


modes = {"lead": ("share", "noshare"), "forward": ("new", "old")}[what]
err = {m: [] for m in modes}
for prefix, sufs in cases:
    ref = hubs["fp32"].score_candidates(keys["fp32"], prefix, sufs, batch_size=20)
    for mode in modes:
        use(mode)
        got = hubs["bf16"].score_candidates(keys["bf16"], prefix, sufs, batch_size=20)
        err[mode] += [abs(a - b) for a, b in zip(got, ref)]
use(modes[0])
for m, e in err.items():
    e = sorted(e)
    print(scen, m, f"n {len(e)} mean {sum(e)/len(e):.4f} p95 {e[int(0.95*len(e))]:.4f} max {e[-1]:.4f}")
