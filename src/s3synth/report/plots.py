"""The report's figures: matplotlib (Agg, no pyplot state) rendered to inline SVG strings."""

from __future__ import annotations

import io
import re
from typing import Sequence

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B", "#9D755D"]
INK, GRID = "#333842", "#e3e6ea"


def _mpl():
    try:
        import matplotlib
    except ImportError:
        from .errors import S3Error
        raise S3Error("the report needs matplotlib: pip install 's3synth[report]'") from None
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    return matplotlib, Figure


def _figure(w: float, h: float, ncols: int = 1):
    matplotlib, Figure = _mpl()
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.set_facecolor("white")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color("#9aa0a8")
        ax.tick_params(colors=INK, labelsize=9)
        ax.grid(True, color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def to_svg(fig, name: str) -> str:
    """The figure as an inline <svg> (no XML prolog, responsive width, ids unique to `name`)."""
    matplotlib, _ = _mpl()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"s3synth-{name}"}):
        fig.savefig(buf, format="svg", facecolor="white")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"',
                 lambda m: f'<svg{m.group(1)} class="plot-svg" data-figure="{name}" role="img"', svg, count=1)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    return svg


def _title(ax, text: str) -> None:
    ax.set_title(text, fontsize=11, color=INK, loc="left", pad=8, fontweight="bold")


def metric_curves(points: Sequence[dict], metric: str) -> str:
    """Held-out (gold eval) and test metric of each model, against synthetic-set size and cumulative LLM tokens.
    points: [{"name", "size", "tokens", "holdout", "test"}] in training order, "size" counting synthetic
    examples only; a point with "real" examples besides (the final model of --final-train synthetic+gold) is
    annotated "+N real" rather than moved right by them."""
    fig, (a, b) = _figure(10.5, 3.7, 2)
    for ax, key, xlabel in ((a, "size", "synthetic training examples"), (b, "tokens", "cumulative LLM tokens")):
        for series, color, marker, style in (("holdout", PALETTE[0], "o", "-"), ("test", PALETTE[1], "s", "--")):
            pts = [(p[key], p[series]) for p in points if p.get(series) is not None and p.get(key) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            label = "held-out gold eval" if series == "holdout" else "test"
            ax.plot(xs, [100 * y for y in ys], color=color, marker=marker, linestyle=style, linewidth=2.2,
                    markersize=7, label=label)
            for p in points:
                if p.get(series) is not None and p.get(key) is not None:
                    name = p["name"] + (f" (+{p['real']} real)" if p.get("real") else "")
                    ax.annotate(name, (p[key], 100 * p[series]), textcoords="offset points",
                                xytext=(0, 8 if series == "test" else -14), ha="center", fontsize=8, color=color)
        ax.set_xlabel(xlabel, fontsize=9, color=INK)
        ax.set_ylabel(f"{metric} (%)", fontsize=9, color=INK)
        if key == "tokens":
            ax.xaxis.set_major_formatter(_thousands())
        ax.margins(x=0.08, y=0.18)
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    _title(a, f"{metric} per model vs. synthetic-set size")
    _title(b, f"{metric} per model vs. LLM tokens spent")
    return to_svg(fig, "metric-curves")


def _thousands():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k" if abs(v) >= 100_000 else f"{v:,.0f}")


def label_balance(stages: Sequence[str], counts: Sequence[dict], labels: Sequence[str]) -> str:
    """Stacked bars: examples per label for each stage (seed, added per round, final set)."""
    fig, (ax,) = _figure(10.5, 3.4)
    ax.grid(False, axis="x")
    xs = range(len(stages))
    bottom = [0] * len(stages)
    tallest = max([sum(c.values()) for c in counts] + [1])
    for i, lab in enumerate(labels):
        vals = [c.get(lab, 0) for c in counts]
        bars = ax.bar(xs, vals, bottom=bottom, color=PALETTE[i % len(PALETTE)], width=0.6, label=lab,
                      edgecolor="white", linewidth=0.8)
        for rect, v, btm in zip(bars, vals, bottom):
            if v >= 0.07 * tallest:
                ax.text(rect.get_x() + rect.get_width() / 2, btm + v / 2, str(v), ha="center", va="center",
                        fontsize=8, color="white", fontweight="bold")
        bottom = [x + v for x, v in zip(bottom, vals)]
    for x, total in zip(xs, bottom):
        ax.text(x, total, f"{total}", ha="center", va="bottom", fontsize=8, color=INK)
    ax.set_xticks(list(xs), stages)
    ax.set_ylabel("examples", fontsize=9, color=INK)
    ax.legend(fontsize=8, frameon=False, ncols=min(len(labels), 6), loc="upper left")
    ax.margins(y=0.15)
    _title(ax, "Label balance per stage")
    return to_svg(fig, "label-balance")


def table6_plot(rows_by_round: dict[str, list[dict]]) -> str:
    """Edit distance and cosine distributions, and x_mis vs x_add lengths, per round."""
    has_cos = any(r.get("cosine") is not None for rs in rows_by_round.values() for r in rs)
    fig, axes = _figure(10.5, 3.4, 3 if has_cos else 2)
    rounds = [k for k, v in rows_by_round.items() if v]
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(rounds)}
    ed = axes[0]
    ed.hist([[r["edit_distance"] for r in rows_by_round[k]] for k in rounds], bins=_int_bins(rows_by_round),
            stacked=True, color=[colors[k] for k in rounds], label=rounds, edgecolor="white", linewidth=0.5)
    ed.set_xlabel("word edit distance x_mis -> x_add", fontsize=9, color=INK)
    ed.set_ylabel("added examples", fontsize=9, color=INK)
    _title(ed, "Edit distance to the source")
    if has_cos:
        cs = axes[1]
        cs.hist([[r["cosine"] for r in rows_by_round[k] if r.get("cosine") is not None] for k in rounds], bins=15,
                stacked=True, color=[colors[k] for k in rounds], label=rounds, edgecolor="white", linewidth=0.5)
        cs.set_xlabel("cosine similarity (MiniLM)", fontsize=9, color=INK)
        _title(cs, "Embedding similarity")
    sc = axes[-1]
    top = 1
    for k in rounds:
        xs = [r["len_mis"] for r in rows_by_round[k]]
        ys = [r["len_add"] for r in rows_by_round[k]]
        top = max([top, *xs, *ys])
        sc.scatter(xs, ys, s=18, alpha=0.75, color=colors[k], label=k, edgecolors="white", linewidths=0.4)
    sc.plot([0, top], [0, top], color="#9aa0a8", linestyle="--", linewidth=1)
    sc.set_xlabel("words in x_mis (source)", fontsize=9, color=INK)
    sc.set_ylabel("words in x_add", fontsize=9, color=INK)
    _title(sc, "Length: source vs. added")
    for ax in axes:
        ax.legend(fontsize=8, frameon=False)
    return to_svg(fig, "table6")


def _int_bins(rows_by_round: dict[str, list[dict]], most: int = 15):
    v = [r["edit_distance"] for rs in rows_by_round.values() for r in rs] or [0]
    lo, hi = min(v), max(v)
    return [lo - 0.5 + i for i in range(hi - lo + 2)] if hi - lo < most else most


SCREEN_SERIES = (("clean", "kept", PALETTE[2]), ("kept_leak", "kept, flagged as gold-eval leak", PALETTE[3]),
                 ("kept_dup", "kept, duplicate", PALETTE[1]),
                 ("dropped", "dropped (--drop-leaks / --dedup)", PALETTE[5]),
                 ("rejected", "rejected by answer cleaning", "#a9afb8"),
                 ("surplus", "clean but not needed", "#d5d9de"))


def screen_counts(stages: Sequence[str], counts: Sequence[dict]) -> str:
    """100% bars per stage splitting its LLM answers: kept clean, kept but flagged (leak, duplicate),
    dropped, rejected by cleaning; counts on the segments."""
    fig, (ax,) = _figure(10.5, 0.9 + 0.62 * len(stages))
    ax.grid(False, axis="y")
    for y, c in enumerate(counts):
        total = sum(c.get(k, 0) for k, _, _ in SCREEN_SERIES) or 1
        left = 0.0
        for key, label, color in SCREEN_SERIES:
            v = c.get(key, 0)
            w = 100 * v / total
            ax.barh(y, w, left=left, color=color, height=0.62, edgecolor="white", linewidth=0.8,
                    label=label if y == 0 else None)
            if v and w >= 3.5:
                ax.text(left + w / 2, y, str(v), ha="center", va="center", fontsize=8, color="white",
                        fontweight="bold")
            left += w
        ax.text(101, y, f"{total} answers", va="center", fontsize=8, color=INK)
    ax.set_yticks(list(range(len(stages))), stages)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel("share of the stage's LLM answers (%)", fontsize=9, color=INK)
    ax.legend(fontsize=8, frameon=False, ncols=3, loc="lower left", bbox_to_anchor=(0, 1.0), handlelength=1.2)
    return to_svg(fig, "screen-counts")


def bench_comparison(methods: Sequence[dict], metric: str) -> str:
    """Left: each method's mean test metric with a ±std error bar and every seed as a dot; right: test metric
    against LLM tokens, one point per run. methods: [{"key", "name", "mean", "std", "runs": [{"seed", "tokens",
    "value"}]}] in table order; values are fractions (None when missing)."""
    fig, (a, b) = _figure(10.5, 3.9, 2)
    a.grid(False, axis="x")
    for i, m in enumerate(methods):
        color = PALETTE[i % len(PALETTE)]
        vals = [r["value"] for r in m["runs"] if r["value"] is not None]
        if m["mean"] is not None:
            a.errorbar([i], [100 * m["mean"]], yerr=[100 * m["std"]], fmt="D", color=color, markersize=8,
                       capsize=6, elinewidth=2)
            a.annotate(f"{100 * m['mean']:.1f}", (i, 100 * m["mean"]), textcoords="offset points", xytext=(-12, 0),
                       ha="right", va="center", fontsize=8, color=color)
        if vals:
            offs = [0.22 + 0.06 * (j % 3) for j in range(len(vals))]
            a.scatter([i + o for o in offs], [100 * v for v in vals], s=26, color=color, alpha=0.8,
                      edgecolors="white", linewidths=0.5, zorder=3, gid=f"bench-seeds-{m['key']}")
        pts = [(r["tokens"], r["value"]) for r in m["runs"] if r["value"] is not None]
        if pts:
            b.scatter([t for t, _ in pts], [100 * v for _, v in pts], s=40, color=color, label=m["name"],
                      edgecolors="white", linewidths=0.6, zorder=3, gid=f"bench-tokens-{m['key']}")
    a.set_xticks(list(range(len(methods))), [m["name"].replace(" (", "\n(") for m in methods], fontsize=8)
    a.set_xlim(-0.6, len(methods) - 0.2)
    a.margins(y=0.2)
    a.set_ylabel(f"test {metric} (%)", fontsize=9, color=INK)
    _title(a, f"Test {metric}: mean ± std over seeds, dots = seeds")
    b.set_xlabel("LLM tokens of the run", fontsize=9, color=INK)
    b.set_ylabel(f"test {metric} (%)", fontsize=9, color=INK)
    b.xaxis.set_major_formatter(_thousands())
    b.margins(x=0.08, y=0.2)
    b.legend(fontsize=8, frameon=False, loc="best")
    _title(b, f"Test {metric} vs. LLM tokens, one point per run")
    return to_svg(fig, "bench-comparison")
