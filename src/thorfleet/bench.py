"""``thorfleet bench``'s report: from each host's results (``<host>.json``, written by
playbooks/bench.yml), the guide's table (model, quantisation, then vLLM, SGLang and
llama.cpp decode tok/s), a table of every service's numbers, and a PNG chart.
"""

from __future__ import annotations

import json
from pathlib import Path

from thorfleet.tables import text_table

# The guide's columns, in its order.
ENGINES = (("vllm", "vLLM (tok/s)"), ("sglang", "SGLang (tok/s)"),
           ("llama-server", "llama.cpp (tok/s)"))


def load(directory: Path, hosts: list[str] | None = None) -> list[dict]:
    """The results of each host (all in `directory`, or those named), by host name."""
    files = sorted(directory.glob("*.json"))
    results = [json.loads(path.read_text()) for path in files]
    return [r for r in results if hosts is None or r["host"] in hosts]


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def guide_table(result: dict) -> str:
    """One host's decode speeds as the guide tabulates them: a row per model and
    quantisation, a column per engine (two services in one cell are both shown)."""
    rows: dict[tuple[str, str], dict[str, list[str]]] = {}
    for service in result["services"]:
        cells = rows.setdefault((service["model_name"], service["quantization"]), {})
        decode = (service.get("median") or {}).get("decode_tps")
        cells.setdefault(service["engine"], []).append(_number(decode))
    # The guide's engines, then any other engine a host runs, by its catalogue name.
    named = dict(ENGINES)
    others = sorted({s["engine"] for s in result["services"]} - set(named))
    columns = [*ENGINES, *((engine, f"{engine} (tok/s)") for engine in others)]
    lines = [("model", "quantisation", *(title for _, title in columns))]
    for (model, quantization), cells in rows.items():
        lines.append((model, quantization or "-",
                      *(" / ".join(cells.get(engine, [])) or "" for engine, _ in columns)))
    return text_table(lines)


def detail_table(results: list[dict]) -> str:
    """Every service's medians; where the server timed itself, its numbers and how far
    the client's decode speed is from the server's."""
    lines = [("host", "service", "engine", "TTFT ms", "prompt tok/s", "decode tok/s",
              "server prompt tok/s", "server decode tok/s", "difference")]
    for result in results:
        for service in result["services"]:
            median = service.get("median") or {}
            difference = median.get("server_difference_pct")
            lines.append((
                result["host"], service["name"], service["engine"],
                _number(median["ttft_s"] * 1000 if median.get("ttft_s") is not None else None,
                        0),
                _number(median.get("prompt_tps")), _number(median.get("decode_tps")),
                _number(median.get("server_prompt_tps")),
                _number(median.get("server_decode_tps")),
                "-" if difference is None else f"{difference:+.1f}%"))
    return text_table(lines)


def power(result: dict) -> str:
    """The power state the numbers were measured at, as the results record it."""
    state = result.get("power")
    if not state:
        return "no power mode (not a Jetson)"
    clocks = "jetson_clocks on" if state["jetson_clocks"] else "jetson_clocks off"
    return f"power mode {state['mode']}, {clocks}"


def report(results: list[dict]) -> str:
    parts = []
    for result in results:
        if not result["services"]:
            parts.append(f"{result['host']}: no chat or vision services to time")
            continue
        parts.append(f"{result['host']}: decode speed, median of {result['runs']} runs of "
                     f"{result['max_tokens']} tokens, {power(result)}\n{guide_table(result)}")
    parts.append(detail_table(results))
    return "\n\n".join(parts)


def chart(results: list[dict], path: Path) -> Path:
    """A bar per service (host, service, model and quantisation) of its decode speed,
    coloured by engine, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot
    from matplotlib.patches import Patch

    bars = [(f"{r['host']} {s['name']}\n{s['model_name']} {s['quantization']}".rstrip(),
             s["engine"], (s.get("median") or {}).get("decode_tps") or 0)
            for r in results for s in r["services"]]
    colours = {"vllm": "tab:green", "sglang": "tab:orange", "llama-server": "tab:blue"}
    figure, axes = pyplot.subplots(figsize=(8, 1.5 + 0.6 * max(len(bars), 1)))
    positions = range(len(bars))
    axes.barh(list(positions), [value for *_, value in bars],
              color=[colours.get(engine, "tab:gray") for _, engine, _ in bars])
    axes.set_yticks(list(positions), [label for label, *_ in bars], fontsize=8)
    axes.invert_yaxis()
    axes.margins(x=0.12)  # room for the numbers
    axes.set_xlabel("decode tokens per second (median)")
    axes.set_title("thorfleet bench")
    for position, (_, _, value) in zip(positions, bars, strict=True):
        axes.annotate(f"{value:.1f}", (value, position), xytext=(3, 0),
                      textcoords="offset points", va="center", fontsize=8)
    handles = [Patch(color=colour, label=engine)
               for engine, colour in colours.items()]
    axes.legend(handles=handles, loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)
    return path
