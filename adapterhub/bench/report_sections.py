"""The report's sections, one per suite: its Markdown tables, and its plot when matplotlib is there."""
from __future__ import annotations

import json

from . import report_plots as plots
from .report import REQUEST_MODES, _by, _f, _group, _mib, _mode, _ratio, _table, _train_order, _value  # noqa: F401


def _section(groups: dict[str, list[dict]], title: str, intro: str, per_group, plot=None) -> list[str]:
    """A suite's section: its title and what its figures mean, per_group(label, rows) -> Markdown lines
    for each base and device, then plot(groups) -> the image's line (None: no matplotlib here)."""
    if not groups:
        return []
    md = [title, "", intro, ""]
    for label, rs in groups.items():
        md += per_group(label, rs)
    if plot is not None:
        md += [plot(groups), ""]
    return md


def _section_base(rows, results, plt) -> list[str]:
    def per_group(label, rs):
        quants = list(dict.fromkeys(r["params"]["quant"] for r in rs))
        cuda = any(r["metric"] == "steady_gpu_bytes" for r in rs)
        bf16 = (_value(rs, "steady_gpu_bytes", quant="bf16") or {}).get("value")
        body = []
        for q in quants:
            get = lambda m: (_value(rs, m, quant=q) or {}).get("value")  # noqa: E731
            dtype = next((r.get("dtype") for r in rs if r["params"]["quant"] == q), "")
            linear = (_value(rs, "param_bytes", quant=q) or {}).get("linear_bytes")
            row = [q, dtype, _mib(get("param_bytes")), _mib(linear), _f(get("load_s"))]
            if cuda:
                row += [_mib(get("steady_gpu_bytes")), _ratio(get("steady_gpu_bytes"), bf16), _mib(get("load_peak_gpu_bytes")),
                        _mib(get("forward_peak_gpu_bytes")), _mib(get("train_step_peak_gpu_bytes"))]
            else:
                row += [_mib(get("peak_rss_bytes")), _mib(get("rss_delta_bytes"))]
            body.append(row)
        head = ["quant", "dtype", "param MiB", "linear MiB", "load s"]
        head += (["steady GPU MiB", "vs bf16", "load peak MiB", "forward peak MiB", "train step peak MiB"] if cuda
                 else ["peak RSS MiB", "RSS delta MiB"])
        return [f"**{label}**", ""] + _table(head, body)
    return _section(
        _by([r for r in rows if r["metric"] != "skipped"], "base"), "## 1. Base memory and load time per quant mode",
        "param = parameter + buffer bytes as stored (4-bit weights count their packed bytes and absmax), of "
        "which linear = the decoder's Linear layers (what quantization shrinks; embeddings, head and norms stay "
        "in the compute dtype). CUDA: steady = the allocator's bytes after the load minus before it; vs bf16 = "
        "steady over bf16's; load / forward / train-step peak = the allocator's peak over that work alone (reset "
        "before it; forward: 8 x 512 tokens, no grad; train step: PEFT LoRA r=8, 4 x 256 tokens). CPU: peak "
        "RSS = the loading process's peak (imports included), RSS delta = growth over the load, each quant "
        "mode in a fresh process.", per_group, plt and (lambda groups: plots.base_memory(plt, results, groups)))


def _section_adapters(rows, results, plt) -> list[str]:
    def per_group(label, rs):
        body = []
        for k in sorted({r["params"]["rank"] for r in rs}):
            f, w, res = (((_value(rs, m, rank=k) or {}).get("value")) for m in
                         ("adapter_file_bytes", "adapter_weight_bytes", "adapter_resident_bytes"))
            body.append([k, _f(f / 1024 if f else None), _f(w / 1024 if w else None), _f(res / 1024 if res else None),
                         _ratio(res, w)])
        return [f"**{label}** (quant {rs[0].get('quant')})", ""] + _table(
            ["rank", "file KiB", "weights KiB", "resident KiB", "resident / weights"], body)
    return _section(
        _by([r for r in rows if r["metric"] != "skipped"], "adapters"), "## 2. Adapter size per rank (q/k/v/o)",
        "file = adapter_model.safetensors (fp32); weights = the hub's A and B in the compute dtype; "
        "resident = measured memory growth per loaded adapter (RSS on CPU, CUDA allocated on GPU).",
        per_group, plt and (lambda groups: plots.adapter_size(plt, results, groups)))


def _section_runtime(rows, results, plt) -> list[str]:
    def per_group(label, rs):
        body = []
        for n in sorted({r["params"]["resident"] for r in rs if "resident" in r["params"]}):
            cl, sw = _value(rs, "cold_load_ms", resident=n) or {}, _value(rs, "switch_ms", resident=n) or {}
            body.append([n, _f(cl.get("value")), _f(cl.get("peft")), _ratio(cl.get("peft"), cl.get("value")),
                         _f(sw.get("value")), _f(sw.get("peft")), _ratio(sw.get("peft"), sw.get("value"))])
        md = [f"**{label}**", ""] + _table(["resident", "cold load ms (adapterhub)", "cold load ms (PEFT)", "PEFT / adapterhub",
                                            "switch ms (adapterhub)", "switch ms (PEFT)", "PEFT / adapterhub"], body)
        other = [r for r in rs if r["metric"] not in ("cold_load_ms", "switch_ms")]
        if other:
            md += _table(["metric", "params", "quant", "adapterhub", "plain PEFT", "notes"],
                         [[r["metric"], json.dumps(r["params"]), r.get("quant", "-"), f"{_f(r['value'])} {r['unit']}",
                           f"{_f(r['peft'])} {r['unit']}" if "peft" in r else "-", _notes(r)] for r in other])
        return md
    return _section(
        _by([r for r in rows if r["metric"] != "skipped"], "runtime"),
        "## 3. Cold load and switch latency vs resident adapters (adapterhub vs plain PEFT)",
        "cold load = read + check + place one more adapter (then unload it) with n resident; switch = make another "
        "resident adapter active. Median ms; lower is better.",
        per_group, plt and (lambda groups: plots.latency_vs_resident(plt, results, groups)))


def _notes(r: dict) -> str:
    skip = {"suite", "run", "metric", "params", "value", "unit", "env", "peft", "base", "device", "quant", "dtype"}
    return ", ".join(f"{k}={_f(v)}" for k, v in r.items() if k not in skip)


def _section_forward(rows, results, plt) -> list[str]:
    rs_all = [r for r in rows if r["suite"] == "forward" and r["metric"] == "forward_rows_per_s"]
    groups: dict[str, list[dict]] = {}
    for r in rs_all:
        groups.setdefault(f"{_group(r)}, {r.get('quant')}", []).append(r)
    p0 = rs_all[0]["params"] if rs_all else {}

    def per_group(label, rs):
        single = _value(rs, "forward_rows_per_s", mode="single") or {}
        body = [[_mode(r["params"]), _f(r["value"]), _f(r.get("peft")), _ratio(r["value"], r.get("peft")),
                 _ratio(r["value"], single.get("value")), _ratio(r.get("peft"), single.get("peft")),
                 _f(r.get("max_abs_diff"), 2) if "max_abs_diff" in r else r.get("note", "")] for r in rs]
        return [f"**{label}**", ""] + _table(["mode", "adapterhub rows/s", "PEFT rows/s", "adapterhub / PEFT",
                                              "adapterhub vs single", "PEFT vs single", "max diff / note"], body)
    return _section(
        groups, "## 4. Forward throughput (adapterhub vs plain PEFT)",
        f"rows/s for one batch of {p0.get('rows')} rows x {p0.get('seq')} tokens; mixed-k = k adapters among the rows "
        "in one forward, split-k = one forward per adapter on its rows, switching between them; merged = adapter "
        "folded into the base weights (n/a on 4-bit bases). 'vs single' is each tool against its own "
        "single-adapter throughput; max diff = the hub's answer logit vs the split (mixed) or unmerged (merged) result.",
        per_group, plt and (lambda groups: plots.forward_throughput(plt, results, groups)))


def _section_ranking(rows, results, plt) -> list[str]:
    def per_group(label, rs):
        body = []
        for n in sorted({r["params"]["candidates"] for r in rs}):
            on = (_value(rs, "ranking_candidates_per_s", candidates=n, reuse_prefix=True) or {})
            off = (_value(rs, "ranking_candidates_per_s", candidates=n, reuse_prefix=False) or {})
            body.append([n, rs[0].get("quant"), _f(on.get("value")), _f(off.get("value")), _ratio(on.get("value"), off.get("value")),
                         f"{on.get('prefix_tokens', '?')} + {_f(on.get('suffix_tokens'))}", _f(on.get("max_abs_p_diff"), 2)])
        return [f"**{label}**", ""] + _table(["candidates", "quant", "cand/s with reuse", "cand/s without", "speed-up",
                                              "prefix + suffix tokens", "max P diff"], body)
    return _section(
        _by(rows, "ranking", "ranking_candidates_per_s"), "## 5. Ranking throughput with and without history-prefix reuse",
        "One user (10-item history) ranks N candidates under one adapter; reuse runs the history prefix once "
        "and shares its KV cache with every candidate.",
        per_group, plt and (lambda groups: plots.ranking(plt, results, groups)))


PEAKS = {"train_peak_gpu_bytes": "peak GPU", "train_peak_bytes": "peak RSS"}  # CUDA: the allocator; CPU: RSS


def _section_train(rows, results, plt) -> list[str]:
    ranking = _by(rows, "train", "rank_candidates_per_s")
    peaks = _by([r for r in rows if r["metric"] in PEAKS], "train")

    def peak_of(label: str, scenario: str, mode: str):
        r = next((r for r in peaks.get(label, []) if r["params"]["scenario"] == scenario and r["params"]["mode"] == mode), None)
        return None if r is None else r["value"]

    def peak_name(label: str) -> str:
        return next((PEAKS[r["metric"]] for r in peaks.get(label, [])), "peak")

    def per_group(label, rs):
        body, summary = [], []
        for scenario in dict.fromkeys(r["params"]["scenario"] for r in rs):
            got = {r["params"]["mode"]: r for r in rs if r["params"]["scenario"] == scenario}
            peak = {m: peak_of(label, scenario, m) for m in got}
            ours = got.get("ours", {}).get("value")
            for mode in sorted(got, key=_train_order):
                r = got[mode]
                body.append([scenario, mode, r.get("compute", "-"), _f(r["value"]), _ratio(ours, r["value"]),
                             _f(r.get("prompt_tokens_per_s")), _mib(peak[mode]),
                             f"{r['params']['steps']} x {r['params']['batch_size']}"])
            if "peft" in got:
                summary.append(f"{scenario}: {_ratio(ours, got['peft']['value'])} the candidates/s, "
                               f"{_ratio(peak.get('ours'), peak['peft'])} the {peak_name(label)}")
        md = [f"**{label}** (quant {rs[0].get('quant')})", ""] + _table(
            ["scenario", "mode", "compute", "candidates/s", "ours / this", "prompt tokens/s",
             f"{peak_name(label)} MiB", "steps x batch"], body)
        if summary:
            md += ["ours / peft: " + "; ".join(summary) + ".", ""]
        if ranking.get(label):
            md += ["Ranking one user's 20 candidates: `Hub.score_candidates` (packed) vs PEFT scoring the 20 full "
                   "prompts in one batch.", ""] + _table(
                ["scenario", "adapterhub cand/s", "PEFT cand/s", "adapterhub / PEFT", "max P diff", "compute"],
                [[r["params"]["scenario"], _f(r["value"]), _f(r.get("peft")), _ratio(r["value"], r.get("peft")),
                  _f(r.get("max_abs_p_diff"), 2), r.get("compute", "-")] for r in ranking[label]])
        return md
    return _section(
        _by(rows, "train", "train_candidates_per_s"),
        "## 6. Training throughput and peak memory (adapterhub's loop vs a plain PEFT loop)",
        "The same candidates, r=8 on q/k/v/o. ours = `Hub.train` (packed shared-prefix groups, gradient "
        "checkpointing); ours-nockpt = the same without checkpointing; peft = PeftModel over the bitsandbytes "
        "base, one full prompt per candidate; peft-bf16 = the same over the base dequantized once to bf16. "
        "candidates/s = candidates judged per second of training steps (higher is better); prompt tokens/s = "
        "candidates/s x the tokens of a candidate's full prompt (what a one-prompt-per-candidate loop computes "
        "to judge as many); ours / this = the two candidates/s of the same run. Peak: CPU = the process's RSS "
        "peak (each mode in a fresh process); CUDA = the allocator's peak over the timed steps (reset before "
        "them), the base included.",
        per_group, plt and (lambda groups: plots.training(plt, results, groups, peak_of, peak_name)))


def _section_merge(rows, results, plt) -> list[str]:
    def per_group(label, rs):
        got = [r for r in rs if r["metric"] == "merge_quality"]
        if not got:
            return [f"**{label}**: skipped — " + "; ".join(r.get("reason", "") for r in rs if r["metric"] == "skipped"), ""]
        scen = list(dict.fromkeys(r["params"]["scenario"] for r in got))
        recipes = list(dict.fromkeys(r["params"]["recipe"] for r in got))
        cell = lambda s, who: _value(got, "merge_quality", scenario=s, recipe=who) or {}  # noqa: E731
        body = []
        for who in recipes:
            row = [who]
            for s in scen:
                c = cell(s, who)
                row.append(_f(c.get("value")) + (f" ({c['kept']:.0%})" if c.get("kept") is not None else ""))
            kept = [cell(s, who).get("kept") for s in scen]
            row.append(f"{min(kept):.0%}" if kept and None not in kept else "")
            body.append(row)
        head = [f"{s} ({cell(s, 'own').get('metric_name', '?')}, {cell(s, 'own').get('n_examples', '?')})" for s in scen]
        md = [f"**{label}** (parents: {', '.join(got[0].get('parents', []))})", ""] + _table(["recipe", *head, "min kept"], body)
        return md + ([plots.merge_quality(plt, results, label, scen, recipes, cell), ""] if plt else [])
    return _section(
        _by(rows, "merge"), "## 7. Quality kept by merges",
        "Each scenario's test primary metric (a slice of its test split, its own facts in the prompt) with its own "
        "adapter, the bare base, and merges of all the shipped adapters by each recipe: method and weights "
        "(mean = 1/n each, sum = 1 each, task arithmetic). kept = (merged - base) / (own - base); the last column "
        "is the worst scenario's.", per_group)


def _section_concurrency(rows, results, plt) -> list[str]:
    def per_group(label, rs):
        md = [f"**{label}** (quant {rs[0].get('quant')})", ""]
        reqs = sorted((r for r in rs if r["metric"] == "concurrent_requests"),
                      key=lambda r: (r["params"]["callers"], REQUEST_MODES.index(r["params"]["mode"])
                                     if r["params"]["mode"] in REQUEST_MODES else 9))
        if reqs:
            body = []
            for r in reqs:
                serial = _value(reqs, "concurrent_requests", callers=r["params"]["callers"], mode="serial") or {}
                body.append([r["params"]["callers"], r["params"]["mode"], _f(r["value"]), _ratio(r["value"], serial.get("value")),
                             _f(r.get("p50_ms")), _f(r.get("p99_ms")), r.get("requests", "?"), r.get("batches", "-")])
            md += _table(["callers", "mode", "requests/s", "vs serial", "p50 ms", "p99 ms", "requests", "batches"], body)
            loads = [r["loadavg_1m"] for r in rs if r.get("loadavg_1m") is not None]
            if loads:  # a shared machine's other processes slow every mode; this says how much was going on
                spread = f"{min(loads):.1f}" + (f"-{max(loads):.1f}" if max(loads) - min(loads) >= 0.05 else "")
                md += [f"One call alone: {_f(reqs[0].get('single_call_ms'))} ms. Machine load (1-min average) while "
                       f"measuring: {spread} on {reqs[0].get('cores', '?')} cores.", ""]
        mixed = [r for r in rs if r["metric"] == "mixed_vs_single"]
        if mixed:
            md += ["Mixed batch: the same rows over 4 adapters in one forward vs on one adapter, paired and taking "
                   "turns; single / mixed is the median over the pairs (1.00x: mixing adapters costs nothing).", ""]
            md += _table(["way", "rows x seq", "pairs", "single ms", "mixed ms", "single / mixed", "max diff"],
                         [[r["params"]["way"], f"{r['params']['rows']} x {r['params']['seq']}",
                           r["params"].get("pairs", r.get("pairs", "?")), _f(r.get("single_ms")), _f(r.get("mixed_ms")),
                           f"{r['value']:.2f}x", _f(r.get("max_abs_diff"), 2)] for r in mixed])
        routing = [r for r in rs if r["metric"] == "routing_us"]
        if routing:
            md += _table(["thread-safe routing", "µs per forward", "note"],
                         [[r["params"]["way"], _f(r["value"]), r.get("note", f"{r['params'].get('wrappers')} wrapped "
                                                                       "Linears, one read each")] for r in routing])
        return md
    return _section(
        _by([r for r in rows if r["metric"] != "skipped"], "concurrency"),
        "## 8. Concurrent requests: the batcher vs one call at a time",
        "1-row score requests, each for one of 4 adapters, from 1, 8 and 32 concurrent callers for a fixed time. "
        "serial = one `hub.score` at a time (callers take turns on a lock: a server without the batcher); threads = "
        "every caller calls `hub.score` at once; batched = the `Batcher` (concurrent rows in one forward). The modes "
        "take turns in short slices of the same run; vs serial = its requests/s over serial's; latency per request, "
        "waiting included.", per_group, plt and (lambda groups: plots.concurrency(plt, results, groups)))


SECTIONS = (_section_base, _section_adapters, _section_runtime, _section_forward, _section_ranking, _section_train,
            _section_merge, _section_concurrency)
