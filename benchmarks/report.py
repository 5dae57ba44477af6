"""Turn benchmark runs into medians, ratios against aiosmtpd, a Markdown report and a chart.

Everything here works on plain JSON-able data, so a saved results file can be rendered again
without re-running the benchmark:

    python3 benchmarks/report.py benchmarks/results/20250101T000000Z.json [--docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

Data = dict[str, Any]

BASELINES = ("aiosmtpd", "aiosmtpd-uvloop")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
REPRODUCE = "python3 benchmarks/run.py --rounds 3"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str
    higher_is_better: bool


LOAD_METRICS = (
    Metric("msgs_per_s", "msg/s", "{:,.0f}", True),
    Metric("cpu_us_per_msg", "server CPU µs/msg", "{:,.0f}", False),
    Metric("peak_rss_mib", "peak RSS MiB", "{:,.1f}", False),
)
IDLE_METRICS = (
    Metric("rss_per_session_kib", "RSS KiB/session", "{:,.2f}", False),
    Metric("cpu_us_per_session", "server CPU µs/session", "{:,.0f}", False),
    Metric("peak_rss_mib", "peak RSS MiB", "{:,.1f}", False),
)


def metrics_for(scenario: Data) -> tuple[Metric, ...]:
    return IDLE_METRICS if scenario["profile"] == "idle" else LOAD_METRICS


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
def summarize(
    runs: Sequence[Any],
    servers: Sequence[Any],
    scenarios: Sequence[Any],
    rounds: int,
    quick: bool,
    ideal_blocking_rate: float,
) -> Data:
    """Everything the outputs need, as one JSON-able dict (dataclasses are flattened)."""
    run_dicts = [_plain(r) for r in runs]
    server_dicts = [_plain(s) for s in servers]
    scenario_dicts = [_plain(s) for s in scenarios]
    medians = {
        sc["name"]: {
            sv["name"]: _median_cell(run_dicts, sc["name"], sv["name"]) for sv in server_dicts
        }
        for sc in scenario_dicts
    }
    return {
        "meta": {
            **machine_meta(),
            "rounds": rounds,
            "quick": quick,
            "ideal_blocking_rate": ideal_blocking_rate,
        },
        "servers": server_dicts,
        "scenarios": scenario_dicts,
        "medians": medians,
        "ratios": {sc: _ratios(cells) for sc, cells in medians.items()},
        "runs": run_dicts,
    }


def _plain(obj: Any) -> Data:
    if isinstance(obj, dict):
        return obj
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(obj).items()}


def _median_cell(runs: list[Data], scenario: str, server: str) -> Data:
    """Median of each metric over the successful rounds, with the failures kept for the report."""
    mine = [r for r in runs if r["scenario"] == scenario and r["server"] == server]
    good = [r["metrics"] for r in mine if r["ok"]]
    keys = sorted({k for m in good for k in m})
    return {
        "n_ok": len(good),
        "n": len(mine),
        "errors": [r["error"] for r in mine if not r["ok"]],
        "metrics": {k: statistics.median(m[k] for m in good if k in m) for k in keys},
    }


def _ratios(cells: dict[str, Data]) -> dict[str, dict[str, dict[str, float]]]:
    """server -> baseline -> metric -> server value / baseline value (same run, medians)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for server, cell in cells.items():
        for base in BASELINES:
            base_metrics = cells.get(base, {}).get("metrics", {})
            ratios = {
                k: v / base_metrics[k] for k, v in cell["metrics"].items() if base_metrics.get(k)
            }
            if ratios:
                out.setdefault(server, {})[base] = ratios
    return out


def machine_meta() -> Data:
    """What a reader needs to judge the numbers: machine, versions, date."""
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "aiosmtpd": _version("aiosmtpd"),
        "uvloop": _version("uvloop"),
        "trio": _version("trio"),
        "anyio": _version("anyio"),
        "postfix": _postfix_version(),
        "date": subprocess.run(
            ["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True
        ).stdout.strip(),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _postfix_version() -> str | None:
    if not shutil.which("dpkg-query"):
        return None
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postfix"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------------------------
# Targets (docs/performance.md lists the same ones)
# ---------------------------------------------------------------------------------------------
HEADLINE = "smtpkit-asyncio-uvloop"
IDLE_TARGET_KIB = 8.0
TRANSPORT_PEERS = ("smtpkit-anyio-asyncio", "smtpkit-anyio-trio", "smtpkit-threads")


def _metric(summary: Data, scenario: str, server: str, key: str) -> float | None:
    value = summary["medians"].get(scenario, {}).get(server, {}).get("metrics", {}).get(key)
    return None if value is None else float(value)


def _ratio(summary: Data, scenario: str, server: str, base: str, key: str) -> float | None:
    value = summary["ratios"].get(scenario, {}).get(server, {}).get(base, {}).get(key)
    return None if value is None else float(value)


def _speedup_target(scenario: str, goal: float) -> Callable[[Data], tuple[str, bool | None]]:
    def check(summary: Data) -> tuple[str, bool | None]:
        r = _ratio(summary, scenario, HEADLINE, "aiosmtpd-uvloop", "msgs_per_s")
        return ("n/a", None) if r is None else (f"{r:.2f}x", r >= goal)

    return check


def _blocking_target(summary: Data) -> tuple[str, bool | None]:
    ideal = summary["meta"]["ideal_blocking_rate"]
    shares = {
        s["name"]: v / ideal
        for s in summary["servers"]
        if s["family"] == "smtpkit"
        if (v := _metric(summary, "blocking", s["name"], "msgs_per_s")) is not None
    }
    if not shares:
        return "n/a", None
    worst = min(shares, key=shares.__getitem__)
    return f"worst {shares[worst]:.0%} ({worst})", shares[worst] >= 0.75


def _idle_target(summary: Data) -> tuple[str, bool | None]:
    sizes = {
        s["name"]: v
        for s in summary["servers"]
        if s["family"] == "smtpkit"
        if (v := _metric(summary, "idle", s["name"], "rss_per_session_kib")) is not None
    }
    if not sizes:
        return "n/a", None
    worst = max(sizes, key=sizes.__getitem__)
    return f"worst {sizes[worst]:.2f} KiB ({worst})", sizes[worst] <= IDLE_TARGET_KIB


def _transport_target(summary: Data) -> tuple[str, bool | None]:
    """asyncio (stdlib loop) msg/s over each other transport's, worst case over scenarios."""
    slowdowns = {}
    for scenario in summary["scenarios"]:
        base = _metric(summary, scenario["name"], "smtpkit-asyncio", "msgs_per_s")
        for peer in TRANSPORT_PEERS:
            value = _metric(summary, scenario["name"], peer, "msgs_per_s")
            if base and value:
                slowdowns[f"{peer}, {scenario['name']}"] = base / value
    if not slowdowns:
        return "n/a", None
    worst = max(slowdowns, key=slowdowns.__getitem__)
    return f"worst {slowdowns[worst]:.2f}x slower ({worst})", slowdowns[worst] <= 1.5


TARGETS: tuple[tuple[str, Callable[[Data], tuple[str, bool | None]]], ...] = (
    ("keep-alive ≥ 4x (asyncio+uvloop vs aiosmtpd+uvloop)", _speedup_target("keepalive", 4)),
    ("1 MB bodies ≥ 4x", _speedup_target("1mb", 4)),
    ("50 recipients ≥ 5x", _speedup_target("rcpt50", 5)),
    ("connect per message ≥ 2x", _speedup_target("connect", 2)),
    ("blocking 20 ms hook ≥ 75% of ideal 1600 msg/s, every transport", _blocking_target),
    ("idle session ≤ 8 KiB RSS, every transport", _idle_target),
    ("anyio and threads within 1.5x of asyncio (stdlib loop)", _transport_target),
)


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def render_markdown(summary: Data, image: str | None) -> str:
    """The results section: run facts, headline, targets, then one table per scenario."""
    parts = [_meta_line(summary), _headline(summary), _targets(summary)]
    parts += [_scenario_table(summary, sc) for sc in summary["scenarios"]]
    if image:
        parts.append(f"![smtpkit vs aiosmtpd, per scenario]({image})")
    return "\n\n".join(p for p in parts if p) + "\n"


def _meta_line(summary: Data) -> str:
    m = summary["meta"]
    mode = "quick smoke run (tiny counts: not a measurement)" if m["quick"] else "full run"
    return (
        f"_{m['date']}: {mode}, medians of {m['rounds']} round(s). {m['cpus']} CPUs "
        f"({m['cpu_model']}), Linux {m['kernel']}, Python {m['python']}, aiosmtpd "
        f"{m['aiosmtpd']}, uvloop {m['uvloop']}, anyio {m['anyio']}, trio {m['trio']}, "
        f"postfix smtp-source {m['postfix']}. Client and server share the machine, on "
        "loopback._"
    )


def _headline(summary: Data) -> str:
    columns = [s for s in summary["servers"] if s["family"] == "smtpkit"]
    if not columns:
        return "### Headline\n\nNo smtpkit server in this run: nothing to compare yet."
    head = "| scenario | " + " | ".join(f"{s['name']} / {s['baseline']}" for s in columns) + " |"
    rows = [head, "|---" * (len(columns) + 1) + "|"]
    for sc in summary["scenarios"]:
        metric = metrics_for(sc)[0]
        cells = [
            _fmt_ratio(_ratio(summary, sc["name"], s["name"], s["baseline"], metric.key))
            for s in columns
        ]
        rows.append(f"| {sc['name']} ({metric.label}) | " + " | ".join(cells) + " |")
    note = (
        "Ratios of medians, smtpkit over aiosmtpd on the matching loop (uvloop against "
        "uvloop, everything else against the stdlib loop). msg/s: higher is better; "
        "RSS/session: lower is better."
    )
    return "### Headline\n\n" + note + "\n\n" + "\n".join(rows)


def _targets(summary: Data) -> str:
    rows = ["| target | measured | met |", "|---|---|---|"]
    for title, check in TARGETS:
        measured, met = check(summary)
        rows.append(f"| {title} | {measured} | {_fmt_met(met)} |")
    return "### Targets, as measured\n\n" + "\n".join(rows)


def _scenario_table(summary: Data, sc: Data) -> str:
    metrics = metrics_for(sc)
    rows = [
        "| server | " + " | ".join(m.label for m in metrics) + " | runs ok |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for server in summary["servers"]:
        cell = summary["medians"][sc["name"]][server["name"]]
        values = [_fmt_value(summary, sc["name"], server["name"], cell, m) for m in metrics]
        ok = f"{cell['n_ok']}/{cell['n']}"
        if cell["errors"]:
            ok += f" ({_escape(cell['errors'][0])})"
        rows.append(f"| {server['name']} | " + " | ".join(values) + f" | {ok} |")
    how = (
        f"`benchmarks/idle_clients.py`, {sc['sessions']:,} sessions"
        if sc["profile"] == "idle"
        else ("`smtp-source " + " ".join(_source_flags(sc)) + "`")
    )
    return (
        f"### {sc['name']}: {sc['title']}\n\n{how}. In brackets: x aiosmtpd · x "
        f"aiosmtpd-uvloop.\n\n" + "\n".join(rows)
    )


def _source_flags(sc: Data) -> list[str]:
    flags = ["-d"] if sc["keepalive"] else []
    flags += ["-s", str(sc["sessions"]), "-m", str(sc["messages"]), "-l", str(sc["length"])]
    return flags + (["-r", str(sc["recipients"])] if sc["recipients"] > 1 else [])


def _fmt_value(summary: Data, scenario: str, server: str, cell: Data, metric: Metric) -> str:
    value = cell["metrics"].get(metric.key)
    if value is None:
        return "failed" if cell["n"] else "—"
    ratios = [_fmt_ratio(_ratio(summary, scenario, server, b, metric.key)) for b in BASELINES]
    return metric.fmt.format(value) + f" ({' · '.join(ratios)})"


def _fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def _fmt_met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[met]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120]


# ---------------------------------------------------------------------------------------------
# Chart
# ---------------------------------------------------------------------------------------------
FAMILY_COLOURS = {"smtpkit": "#2f6db5", "aiosmtpd": "#9a9a9a"}


def render_chart(summary: Data, path: Path) -> bool:
    """One panel per scenario, its main figure per server; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = summary["scenarios"]
    ncols = min(3, len(scenarios))
    nrows = -(-len(scenarios) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(5.2 * ncols, 0.5 * len(summary["servers"]) * nrows + 1.6 * nrows),
        squeeze=False,
    )
    for ax, sc in zip(axes.flat, scenarios, strict=False):
        _panel(ax, summary, sc)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.set_visible(False)
    title = "smtpkit vs aiosmtpd 1.4 (medians" + (
        ", quick run)" if summary["meta"]["quick"] else ")"
    )
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _panel(ax: Any, summary: Data, sc: Data) -> None:
    metric = metrics_for(sc)[0]
    servers = summary["servers"]
    values = [summary["medians"][sc["name"]][s["name"]]["metrics"].get(metric.key) for s in servers]
    ys = range(len(servers))
    ax.barh(ys, [v or 0 for v in values], color=[FAMILY_COLOURS[s["family"]] for s in servers])
    ax.set_yticks(list(ys), [s["name"] for s in servers], fontsize=8)
    ax.invert_yaxis()
    better = "higher" if metric.higher_is_better else "lower"
    ax.set_title(f"{sc['name']}: {metric.label} ({better} is better)", fontsize=9)
    peak = max((v for v in values if v), default=1.0)
    for y, v in zip(ys, values, strict=True):
        ax.text(
            (v or 0) + peak * 0.01,
            y,
            "failed" if v is None else metric.fmt.format(v),
            va="center",
            fontsize=7,
        )
    reference = _reference_line(summary, sc)
    if reference is not None:
        ax.axvline(reference, color="#c0392b", linestyle="--", linewidth=1)
        peak = max(peak, reference)
    ax.set_xlim(0, peak * 1.25)
    ax.tick_params(axis="x", labelsize=7)


def _reference_line(summary: Data, sc: Data) -> float | None:
    """The ideal rate of the blocking hook, or the idle-memory target: where a bar should reach."""
    if sc["profile"] == "blocking":
        return float(summary["meta"]["ideal_blocking_rate"])
    if sc["profile"] == "idle":
        return IDLE_TARGET_KIB
    return None


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def write_outputs(
    summary: Data, out_dir: Path, stamp: str, docs_dir: Path, write_docs: bool
) -> str:
    """Results JSON, Markdown and chart under out_dir; the docs page and chart when asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=1, ensure_ascii=False)
    (out_dir / f"{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    chart = out_dir / f"{stamp}.png"
    has_chart = render_chart(summary, chart)
    markdown = render_markdown(summary, chart.name if has_chart else None)
    (out_dir / f"{stamp}.md").write_text(markdown)
    if write_docs:
        if has_chart:
            shutil.copyfile(chart, docs_dir / "performance.png")
        update_docs(
            docs_dir / "performance.md",
            render_markdown(summary, "performance.png" if has_chart else None),
        )
    return markdown + f"\nresults: {out_dir / (stamp + '.json')}\n"


def update_docs(path: Path, block: str) -> None:
    """Replace what lies between the bench markers; create the page or the markers if missing."""
    text = path.read_text() if path.exists() else "# Performance\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{block.strip()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a saved benchmark results file again.")
    parser.add_argument("results", type=Path, help="a benchmarks/results/*.json file")
    parser.add_argument("--docs", action="store_true", help="update docs/performance.{md,png}")
    args = parser.parse_args(argv)
    summary = json.loads(args.results.read_text())
    root = Path(__file__).resolve().parent.parent
    stamp = args.results.stem
    print(write_outputs(summary, args.results.parent, stamp, root / "docs", args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
