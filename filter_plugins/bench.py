"""Filters of the bench playbook: which services it times, and a line per service of
what it measured."""

from __future__ import annotations

import posixpath

TIMED = ("chat", "vision")  # speech services have no token stream to time


def bench_services(specs):
    """The chat and vision services of a host, as the thorfleet_bench module takes them."""
    return [{"name": spec["name"], "engine": spec["engine"], "recipe": spec["recipe"],
             "url": f"http://{spec['probe_address']}:{spec['port']}",
             "served_name": spec["served_name"],
             "sampling": spec.get("sampling") or {},
             # The guide's table names a model by its repository and its quantisation.
             "model_name": posixpath.basename(spec["model_dir"]),
             "quantization": spec.get("quantization") or ""}
            for spec in specs or [] if spec["modality"] in TIMED]


def _number(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def bench_lines(results):
    """One line per service: its medians, and the server's own decode speed if it has one."""
    lines = []
    for result in results or []:
        median = result.get("median") or {}
        line = (f"{result['name']} ({result['engine']}): "
                f"{_number(median.get('decode_tps'))} tok/s decode, "
                f"TTFT {_number((median.get('ttft_s') or 0) * 1000, 0)} ms, "
                f"{_number(median.get('prompt_tps'))} tok/s prompt")
        if median.get("server_decode_tps") is not None:
            line += (f"; server says {_number(median['server_decode_tps'])} tok/s decode "
                     f"({median['server_difference_pct']:+.1f}%)")
        lines.append(line)
    return lines


def bench_power(state):
    """What the results record of a host's power: its mode and whether jetson_clocks is
    on (jetson_power's state), or None for a host without nvpmodel."""
    if not state or not state.get("nvpmodel"):
        return None
    return {"mode": state.get("mode"), "mode_id": state.get("mode_id"),
            "jetson_clocks": bool(state.get("clocks"))}


class FilterModule:
    def filters(self):
        return {"thorfleet_bench_power": bench_power,
                "thorfleet_bench_services": bench_services,
                "thorfleet_bench_lines": bench_lines}
