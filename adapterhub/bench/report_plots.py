"""The report's PNG plots (matplotlib), one function per figure; report.py writes the tables and
calls these with the rows of each section."""
from __future__ import annotations

from pathlib import Path

from .report import REQUEST_MODES, _mode, _train_order, _value


def _save(fig, results: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(results / name, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return f"![{name}]({name})"


def _subplots(plt, n: int, width: float = 6.0, height: float = 3.6):
    """n panels, two per row; -> (figure, the n axes)."""
    n = max(1, n)
    cols, rows = min(n, 2), (n + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    axes = [ax for row in axes for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def base_memory(plt, results: Path, groups: dict) -> str:
    fig, axes = _subplots(plt, len(groups))
    for ax, (label, rs) in zip(axes, groups.items()):
        quants = list(dict.fromkeys(r["params"]["quant"] for r in rs))
        cuda = any(r["metric"] == "steady_gpu_bytes" for r in rs)
        second = "steady_gpu_bytes" if cuda else "rss_delta_bytes"
        x = range(len(quants))
        for off, metric, name in ((-0.2, "param_bytes", "parameter bytes"),
                                  (0.2, second, "GPU allocated after load" if cuda else "RSS growth on load")):
            ax.bar([i + off for i in x], [((_value(rs, metric, quant=q) or {}).get("value") or 0) / 2**20 for q in quants],
                   0.4, label=name)
        ax.set_xticks(list(x), quants)
        ax.set_ylabel("MiB")
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=8)
    return _save(fig, results, "base_memory.png")


def adapter_size(plt, results: Path, groups: dict) -> str:
    fig, axes = _subplots(plt, 1)
    ax = axes[0]
    for label, rs in groups.items():
        ranks = sorted({r["params"]["rank"] for r in rs})
        for metric, style, name in (("adapter_file_bytes", "o-", "file"), ("adapter_resident_bytes", "s--", "resident")):
            ax.plot(ranks, [((_value(rs, metric, rank=k) or {}).get("value") or 0) / 2**20 for k in ranks], style,
                    label=f"{name}: {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("LoRA rank")
    ax.set_ylabel("MiB per adapter")
    ax.legend(fontsize=7)
    return _save(fig, results, "adapter_size.png")


def latency_vs_resident(plt, results: Path, groups: dict) -> str:
    fig, axes = _subplots(plt, 2)
    for ax, metric, title in zip(axes, ("cold_load_ms", "switch_ms"), ("cold load", "switch")):
        for label, rs in groups.items():
            pts = sorted((r["params"]["resident"], r["value"], r.get("peft")) for r in rs if r["metric"] == metric)
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"adapterhub: {label}")
            theirs = [p for p in pts if p[2] is not None]  # PEFT is left out where it did not fit the budget
            ax.plot([p[0] for p in theirs], [p[2] for p in theirs], "s--", color=line.get_color(), label=f"PEFT: {label}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("resident adapters")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{title} latency vs resident adapters")
        ax.legend(fontsize=7)
    return _save(fig, results, "latency_vs_resident.png")


def forward_throughput(plt, results: Path, groups: dict) -> str:
    fig, axes = _subplots(plt, len(groups), width=7.0)
    for ax, (label, rs) in zip(axes, groups.items()):
        names = [_mode(r["params"]) for r in rs]
        x = range(len(rs))
        ax.bar([i - 0.2 for i in x], [r["value"] or 0 for r in rs], 0.4, label="adapterhub")
        ax.bar([i + 0.2 for i in x], [r.get("peft") or 0 for r in rs], 0.4, label="plain PEFT")
        ax.set_xticks(list(x), names, rotation=30, fontsize=8)
        ax.set_ylabel("rows/s (higher is better)")
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=8)
    return _save(fig, results, "forward_throughput.png")


def ranking(plt, results: Path, groups: dict) -> str:
    fig, axes = _subplots(plt, len(groups))
    for ax, (label, rs) in zip(axes, groups.items()):
        ns = sorted({r["params"]["candidates"] for r in rs})
        x = range(len(ns))
        for off, reuse, name in ((-0.2, True, "prefix reuse"), (0.2, False, "full prompts")):
            ax.bar([i + off for i in x], [(_value(rs, "ranking_candidates_per_s", candidates=n, reuse_prefix=reuse) or {})
                                          .get("value") or 0 for n in ns], 0.4, label=name)
        ax.set_xticks(list(x), [f"{n} candidates" for n in ns])
        ax.set_ylabel("candidates/s")
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=8)
    return _save(fig, results, "ranking.png")


def training(plt, results: Path, groups: dict, peak_of, peak_name) -> str:
    fig, axes = _subplots(plt, 2 * len(groups))
    for i, (label, rs) in enumerate(groups.items()):
        scen = list(dict.fromkeys(r["params"]["scenario"] for r in rs))
        modes = sorted({r["params"]["mode"] for r in rs}, key=_train_order)
        width = 0.8 / len(modes)
        for j, mode in enumerate(modes):
            xs = [k + (j - (len(modes) - 1) / 2) * width for k in range(len(scen))]
            speed = [(_value(rs, "train_candidates_per_s", scenario=s, mode=mode) or {}).get("value") or 0 for s in scen]
            peak = [peak_of(label, s, mode) or 0 for s in scen]
            axes[2 * i].bar(xs, speed, width, label=mode)
            axes[2 * i + 1].bar(xs, [b / 2**20 for b in peak], width, label=mode)
        for ax, ylabel in zip(axes[2 * i:2 * i + 2], ("training candidates/s (higher is better)", f"{peak_name(label)} MiB")):
            ax.set_xticks(list(range(len(scen))), scen)
            ax.set_ylabel(ylabel)
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=7)
    return _save(fig, results, "training.png")


def merge_quality(plt, results: Path, label: str, scen: list, recipes: list, cell) -> str:
    fig, axes = _subplots(plt, 1, width=8.0)
    ax = axes[0]
    merges = [w for w in recipes if w not in ("own", "base")]
    width = 0.8 / max(1, len(merges))
    for j, who in enumerate(merges):
        ax.bar([i + (j - (len(merges) - 1) / 2) * width for i in range(len(scen))],
               [cell(s, who).get("kept") or 0 for s in scen], width, label=who)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(0.7, color="red", lw=0.8, ls="--")
    ax.set_xticks(list(range(len(scen))), scen)
    ax.set_ylabel("kept = (merged - base) / (own - base)")
    ax.set_title(label, fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, results, "merge_quality.png")


def concurrency(plt, results: Path, groups: dict) -> str:
    fig, axes = _subplots(plt, 2 * len(groups))
    for i, (label, rs) in enumerate(groups.items()):
        reqs = [r for r in rs if r["metric"] == "concurrent_requests"]
        for mode in [m for m in REQUEST_MODES if any(r["params"]["mode"] == m for r in reqs)]:
            pts = sorted((r["params"]["callers"], r["value"], r.get("p50_ms"), r.get("p99_ms"))
                         for r in reqs if r["params"]["mode"] == mode)
            xs = [p[0] for p in pts]
            axes[2 * i].plot(xs, [p[1] for p in pts], "o-", label=mode)
            line, = axes[2 * i + 1].plot(xs, [p[3] for p in pts], "o-", label=f"{mode} p99")
            axes[2 * i + 1].plot(xs, [p[2] for p in pts], "s--", color=line.get_color(), label=f"{mode} p50")
        callers = sorted({r["params"]["callers"] for r in reqs})
        for ax, ylabel in zip(axes[2 * i:2 * i + 2], ("requests/s (higher is better)", "latency ms (lower is better)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(callers, [str(c) for c in callers])
            ax.set_xlabel("concurrent callers")
            ax.set_ylabel(ylabel)
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=7)
        axes[2 * i + 1].set_yscale("log")
    return _save(fig, results, "concurrency.png")
