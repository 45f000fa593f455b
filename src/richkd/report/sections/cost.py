"""Section from cost.json: parameters, FLOPs, latency and throughput, beside accuracy where it is known."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from richkd.report.document import FigureBlock, Paragraph, Section, TableBlock
from richkd.report.figures import plot_cost
from richkd.report.sections.common import num
from richkd.report.tables import Table


def cost_section(cost: dict[str, Any], accuracy: Mapping[str, tuple[float, str]]) -> Section:
    """`accuracy` maps a model name to (top-1 %, where it came from), matched by name from the other inputs."""
    models = cost["models"]
    headers = ("model", "arch", "params (M)", "FLOPs / image (M)", "latency, batch 1 (ms)",
               "throughput, batch 256 (img/s)", "top-1 (%)", "top-1 from")
    rows = tuple(
        (name, str(m.get("arch", "—")), num(m["params"], 3, 1e-6), num(m["flops"], 1, 1e-6),
         num(m["latency_ms_b1"]), num(m["throughput_b256_img_s"], 0),
         num(accuracy[name][0]) if name in accuracy else "—", accuracy[name][1] if name in accuracy else "—")
        for name, m in models.items()
    )
    shape = "×".join(str(d) for d in cost["input"])
    where = f"{cost['device']}" + (f" ({cost['cpu']})" if cost.get("cpu") else "")
    fig = plot_cost(list(models), [float(m["params"]) for m in models.values()],
                    [float(m["flops"]) for m in models.values()],
                    [float(m["throughput_b256_img_s"]) for m in models.values()],
                    {name: acc for name, (acc, _) in accuracy.items() if name in models})
    return Section("Model cost", "cost", [
        Paragraph(f"Measured on {where} with {cost['threads']} threads, input {shape}. FLOPs count one forward "
                  "pass of one image (a multiply-add is 2 FLOPs); latency and throughput are medians of timed "
                  "repeats after warm-up."),
        TableBlock(Table(headers, rows), "Cost per model"),
        FigureBlock(fig, "Parameters, FLOPs and throughput per model, and accuracy vs FLOPs"),
    ])
