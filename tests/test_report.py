"""`richkd report`: the run table (seeds grouped, mean ± sample std), the figures, and the HTML/Markdown report
built from synthetic files that follow docs/analysis_formats.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from richkd.cli import build_parser, main
from richkd.errors import RichKDError
from richkd.report import build_report, load_summaries, render_table
from richkd.report import figures as F
from richkd.report.inputs import Curve

CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
SURROGATE_ID = "surrogate:efficientnet-lite0+all-MiniLM-L6-v2:conse-t3-128px-centred"


def _run(tmp: Path, name: str, best: float, last: float, epochs: int = 0) -> Path:
    run = tmp / name
    run.mkdir(parents=True)
    summary = {"best_top1": best, "last_top1": last, "last_top5": 99.0, "last_ece": 0.05, "train_wall_s": 10.0}
    (run / "summary.json").write_text(json.dumps(summary))
    if epochs:
        records = [{"epoch": e, "train/loss": 2.0 / e, "test/top1": last * e / epochs} for e in range(1, epochs + 1)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        cache = {"model_id": SURROGATE_ID, "model_kind": "surrogate"} if "rich" in name else None
        (run / "run.json").write_text(json.dumps({"target_cache": cache}))
    return run


def _reliability(acc: float) -> dict[str, Any]:
    edges = [i / 15 for i in range(16)]
    count = [0] * 10 + [5, 10, 20, 40, 125]
    return {"bin_edges": edges, "count": count,
            "accuracy": [None] * 10 + [acc * 0.6, acc * 0.7, acc * 0.8, acc * 0.9, acc],
            "confidence": [None] * 10 + [0.7, 0.75, 0.82, 0.88, 0.97]}


def _predictor(kind: str, arch: str, top1: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    corr = rng.uniform(-0.2, 0.2, (len(CLASSES), len(CLASSES)))
    np.fill_diagonal(corr, 1.0)
    return {"provenance": {"name": arch, "kind": kind, "arch": arch, "checkpoint_sha256": None,
                           "dataset": "imagefolder", "split": "test", "classes": CLASSES},
            "top1": top1, "top5": 99.0, "nll": 0.7, "ece": 0.107, "adaptive_ece": 0.1, "classwise_ece": 0.02,
            "reliability": _reliability(top1 / 100),
            "quadrants": {"confident_correct": 0.7, "unconfident_correct": 0.08, "confident_wrong": 0.1,
                          "unconfident_wrong": 0.12},
            "consistency": {"semantic_spearman": 0.41, "reference_spearman": 0.83},
            "class_correlation": corr.tolist()}


def write_analysis(path: Path) -> Path:
    analysis = {
        "version": 1, "tau": 0.5, "n_bins": 15, "dataset": "imagefolder", "split": "test", "classes": CLASSES,
        "n": 200,
        "predictors": {"teacher": _predictor("checkpoint", "resnet20", 78.3, 0),
                       "clip": _predictor("vlm", SURROGATE_ID, 45.8, 1),
                       "student": _predictor("checkpoint", "resnet8", 70.0, 2)},
        "semantic_similarity": {"source": f"text embeddings of the class names ({SURROGATE_ID})",
                                "matrix": np.eye(len(CLASSES)).tolist()},
        "flows": [{"from": "teacher", "to": "clip", "states": list(F.QUADRANTS),
                   "counts": [[100, 10, 5, 2], [8, 20, 3, 1], [4, 6, 15, 2], [1, 2, 3, 18]]}],
        "agreement": [{"reference": "teacher", "other": "student", "top1_agreement": 91.2, "mean_kl": 0.12}],
    }
    analysis["predictors"]["student"]["class_correlation"][0][1] = None  # undefined entry: drawn blank
    path.write_text(json.dumps(analysis))
    return path


def write_robustness(path: Path) -> Path:
    per = {"gaussian_noise": [80.0, 70.0, 60.0, 50.0, 40.0], "fog": [60.0, 50.0, 40.0, 30.0, 20.0]}
    robustness = {
        "version": 1, "dataset": "imagefolder", "split": "test", "n_images": 200, "seed": 0, "source": "generated",
        "corruptions": ["gaussian_noise", "fog"], "severities": [1, 2, 3, 4, 5],
        "models": {"teacher": {"checkpoint": "t.pt", "checkpoint_sha256": "ab", "arch": "resnet20",
                               "clean_top1": 90.0, "per_corruption": per, "mean_corruption_accuracy": 50.0,
                               "relative_robustness": 0.5556}},
        "shift": {"cifar10.1": {"teacher": 60.1}}, "wall_s": 1.0,
    }
    path.write_text(json.dumps(robustness))
    return path


def write_cost(path: Path) -> Path:
    cost = {"version": 1, "device": "cpu", "cpu": "Test CPU", "threads": 2, "input": [3, 32, 32],
            "models": {"teacher": {"arch": "resnet20", "params": 272474, "flops": 41000000,
                                   "latency_ms_b1": 2.1, "throughput_b256_img_s": 5100.0}}}
    path.write_text(json.dumps(cost))
    return path


def test_groups_seeds_and_reports_mean_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [_run(tmp_path, "kd_s0", 71.0, 70.0), _run(tmp_path, "kd_s1", 73.0, 72.0), _run(tmp_path, "t", 80, 79)]
    table = render_table(load_summaries(runs))
    # mean 72, sample std sqrt(((71-72)^2 + (73-72)^2) / 1) = 1.414
    assert "| kd | 2 | 72.00 ± 1.41 | 71.00 ± 1.41 |" in table
    assert "| t | 1 | 80.00 | 79.00 |" in table
    assert main(["report", *map(str, runs)]) == 0
    assert capsys.readouterr().out == table
    assert _cli(["report", *map(str, runs)]) == 0
    assert capsys.readouterr().out == table, "without --out the new command prints the same table"


def test_unfinished_run_is_named(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(RichKDError, match=r"half has no summary.json: the run is unfinished: .*--resume"):
        load_summaries([tmp_path / "half"])


def test_folder_of_runs_asks_for_its_subdirectories(tmp_path: Path) -> None:
    _run(tmp_path / "grid", "kd_s0", 71.0, 70.0)
    with pytest.raises(RichKDError, match=r"pass the sub-directories, e.g. .*grid/\*"):
        load_summaries([tmp_path / "grid"])


def _assert_readable(fig: Figure) -> None:
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert plots
    for ax in plots:
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes {ax.get_title()!r}"
        assert ax.get_title(), "untitled axes"
        assert len(ax.patches) + len(ax.lines) + len(ax.images) + len(ax.collections) > 0, ax.get_title()


def test_figures_have_labelled_axes_and_data() -> None:
    rel = F.Reliability([i / 4 for i in range(5)], [0, 3, 5, 10], [None, 0.3, 0.6, 0.9], [None, 0.4, 0.6, 0.8], 0.05)
    fig = F.plot_reliability({"a": rel, "b": rel})
    _assert_readable(fig)
    assert "ECE 5.0 %" in fig.axes[0].get_title()
    assert len(fig.axes[0].patches) == 2 * 3, "accuracy + gap bars for the 3 non-empty bins"
    quadrants = {"t": {"confident_correct": 0.7, "unconfident_correct": 0.1, "unconfident_wrong": 0.15,
                       "confident_wrong": 0.05}}
    fig = F.plot_quadrants(quadrants, 0.5)
    _assert_readable(fig)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "70.0" in texts and "15.0" in texts and "5.0" in texts, texts
    fig = F.plot_flow("t", "s", F.QUADRANTS, [[4, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    _assert_readable(fig)
    assert "4\n40.0%" in [t.get_text() for t in fig.axes[0].texts], "count and share of the 10 samples"
    corr = np.eye(3).tolist()
    fig = F.plot_class_correlation("t", corr, "s", corr, ["a", "b", "c"])
    _assert_readable(fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    many = np.eye(25).tolist()
    fig = F.plot_class_correlation("t", many, "s", many, [str(i) for i in range(25)])
    assert list(fig.axes[0].get_xticks()) == [], "ticks off above 20 classes"
    _assert_readable(F.plot_robustness_curves([1, 2], {"m": 90.0}, {"m": [80.0, 70.0]}))
    _assert_readable(F.plot_corruption_heatmap(["fog", "snow"], ["m", "n"], [[50.0, 60.0], [40.0, 30.0]]))
    _assert_readable(F.plot_cost(["m", "n"], [1e6, 2e6], [4e7, 8e7], [5000.0, 2000.0], {"m": 71.0}))
    curve = Curve((1, 2), (2.0, 1.0), (1, 2), (50.0, 60.0))
    _assert_readable(F.plot_training_curves({"kd_s0": curve, "kd_s1": curve}))


def _cli(argv: list[str]) -> int:
    """`richkd ARGV` in process, RichKDError propagating (pytest.raises checks the message)."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def _all_inputs(tmp_path: Path) -> tuple[list[Path], Path, Path, Path]:
    runs = [_run(tmp_path / "runs", "kd_s0", 71.0, 70.0, 3), _run(tmp_path / "runs", "kd_s1", 73.0, 72.0, 3),
            _run(tmp_path / "runs", "richkd_s0", 75.0, 74.0, 3)]
    return (runs, write_analysis(tmp_path / "analysis.json"), write_robustness(tmp_path / "robustness.json"),
            write_cost(tmp_path / "cost.json"))


def test_report_has_every_section_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs, analysis, robustness, cost = _all_inputs(tmp_path)
    out = tmp_path / "out"
    assert _cli(["report", *map(str, runs), "--analysis", str(analysis), "--robustness", str(robustness),
                 "--cost", str(cost), "--title", "Test <report>", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out / "report.html")
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    for heading in ("Summary", "Training curves", "Calibration", "Confidence quadrants and flows",
                    "Inter-class consistency", "Robustness", "Model cost"):
        assert f"<h2>{heading}</h2>" in html and f"## {heading}" in md
    # curves, reliability, quadrants, flow, 1 correlation pair, robustness curve + heat map, cost
    assert html.count('src="data:image/png;base64,') == 8
    assert not re.search(r"https?://", html) and "<link" not in html and "<script" not in html
    assert "<title>Test &lt;report&gt;</title>" in html
    assert "clip [surrogate VLM, not CLIP]" in html and "clip [surrogate VLM, not CLIP]" in md
    assert "surrogate (not CLIP)" in md, "the run distilled from the surrogate says so"
    assert "offline surrogate" in html and "offline surrogate" in md, "the banner"
    # hand-computed: severity 1 mean of 80 and 60 = 70.00; fog mean over severities (60+50+40+30+20)/5 = 40.0
    assert "| teacher | resnet20 | 90.00 | 50.00 | 0.556 | 70.00 | 60.00 | 50.00 | 40.00 | 30.00 |" in md
    assert "| fog | 40.0 |" in md
    assert "| teacher | 70.0 | 8.0 | 12.0 | 10.0 |" in md, "quadrants in percent, table order"
    assert "| teacher | resnet20 | 0.272 | 41.0 | 2.10 | 5100 | 78.30 | analysis.json |" in md
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert "| kd | 2 | 72.00 ± 1.41 | 71.00 ± 1.41 |" in md and cells[cells.index("kd"):][:4] == [
        "kd", "2", "72.00 ± 1.41", "71.00 ± 1.41"], "the same table in both"


def test_missing_inputs_leave_a_note(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "kd_s0", 71.0, 70.0)]
    html, md = build_report(runs, analysis=None, robustness=None, cost=None, title="t")
    for command in ("richkd analyze", "richkd robustness", "richkd cost"):
        assert f"<code>{command}" in html and f"`{command}" in md
    assert "No metrics.jsonl (no curve) in: kd_s0" in md
    assert "data:image/png" not in html and "<h2>Calibration</h2>" in html
    assert "offline surrogate" not in html


@pytest.mark.parametrize(
    ("edit", "flag", "message"),
    [
        (lambda d: d.update(version=2), "--analysis", r"analysis.json has version 2.*richkd analyze"),
        (lambda d: d.pop("predictors"), "--analysis", r"analysis.json is not a valid analysis.json: the file lacks "
                                                      r"predictors"),
        (lambda d: d["predictors"]["teacher"].pop("quadrants"), "--analysis", r"entry 'teacher' lacks quadrants"),
    ],
)
def test_malformed_analysis_names_the_file(tmp_path: Path, edit: Any, flag: str, message: str) -> None:
    path = write_analysis(tmp_path / "analysis.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(RichKDError, match=message):
        _cli(["report", str(_run(tmp_path, "kd_s0", 71.0, 70.0)), flag, str(path), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "report.html").exists(), "nothing half-written"


def test_foreign_or_broken_files_are_refused(tmp_path: Path) -> None:
    run = _run(tmp_path, "kd_s0", 71.0, 70.0)
    robustness = write_robustness(tmp_path / "robustness.json")
    with pytest.raises(RichKDError, match=r"robustness.json is not a valid analysis.json"):
        build_report([run], analysis=robustness, robustness=None, cost=None, title="t")
    broken = tmp_path / "cost.json"
    broken.write_text("{not json")
    with pytest.raises(RichKDError, match=r"cost.json is not valid JSON.*richkd cost"):
        build_report([run], analysis=None, robustness=None, cost=broken, title="t")
    with pytest.raises(RichKDError, match=r"--robustness .*nope.json not found"):
        build_report([run], analysis=None, robustness=tmp_path / "nope.json", cost=None, title="t")
    with pytest.raises(RichKDError, match=r"--analysis only applies to the HTML report: add --out"):
        _cli(["report", str(run), "--analysis", str(robustness)])


def test_robustness_without_corruptions_shows_tables_only(tmp_path: Path) -> None:
    path = write_robustness(tmp_path / "robustness.json")
    data = json.loads(path.read_text())
    data["corruptions"] = []
    data["models"]["teacher"].update(per_corruption={}, mean_corruption_accuracy=None, relative_robustness=None)
    path.write_text(json.dumps(data))
    html, md = build_report([_run(tmp_path, "kd_s0", 71.0, 70.0)], analysis=None, robustness=path, cost=None,
                            title="t")
    assert "| teacher | resnet20 | 90.00 | — | — | — | — | — | — | — |" in md
    assert "| cifar10.1 | 60.10 |" in md and "data:image/png" not in html


def _selected(run: Path, on: str) -> Path:
    summary = json.loads((run / "summary.json").read_text())
    summary.update({"best_selected_on": on, **({"best_val_top1": 66.0} if on == "val" else {})})
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_best_is_labelled_with_the_split_that_chose_it(tmp_path: Path) -> None:
    """issue 27 item 7: "best" is chosen on the test set unless data.val_split chose it; the table says which."""
    old = [_run(tmp_path, "kd_s0", 71.0, 70.0), _run(tmp_path, "kd_s1", 73.0, 72.0)]  # summaries without the key
    table = render_table(load_summaries(old))
    assert table.splitlines()[0].startswith("| run | n | best top-1 (%, chosen on test) | last top-1 (%) |")
    val = [_selected(_run(tmp_path, f"v_s{s}", 60.0, 61.0), "val") for s in (0, 1)]
    table = render_table(load_summaries(val))
    assert "| best top-1 (%, chosen on val) |" in table and "| v | 2 | 60.00 ± 0.00 |" in table
    mixed = render_table(load_summaries([*old, *val]))
    assert "chosen on test or val: see each cell" in mixed
    assert "| kd | 2 | 72.00 ± 1.41 [test] |" in mixed and "| v | 2 | 60.00 ± 0.00 [val] |" in mixed
    _, markdown = build_report(val, analysis=None, robustness=None, cost=None, title="t")
    assert "best top-1 (%, chosen on val)" in markdown and "data.val_split" in markdown


def test_study_table_labels_best_with_its_selection() -> None:
    from richkd.report.sections.study import comparison_tables, results_table

    def results(on: str | None) -> dict[str, Any]:
        run = {"best_top1": 70.0} if on is None else {"best_top1": 70.0, "best_selected_on": on}
        arm = {"title": "a", "seeds_asked": [0], "seeds_done": [0], "per_seed": {"0": run},
               "summary": {"best_top1": {"n": 1, "mean": 70.0, "std": None}}}
        return {"metrics": {"best_top1": {"label": "best top-1 (%)", "digits": 2, "higher_is_better": True}},
                "arms": {"a": arm, "b": arm}, "compare": ["a"],
                "comparisons": [{"arm": "b", "against": "a", "metric": "best_top1", "seeds": [0],
                                 "differences": [0.0], "n": 1, "mean": 0.0, "low": None, "high": None,
                                 "verdict": "one seed"}]}

    assert "best top-1 (%, chosen on test)" in results_table(results(None)).headers
    assert "best top-1 (%, chosen on val)" in results_table(results("val")).headers
    (_, table), = comparison_tables(results("val"))
    assert table.rows[0][1] == "best top-1 (%, chosen on val)"


def test_validation_curve_is_read_and_drawn(tmp_path: Path) -> None:
    from richkd.report.inputs import load_curve

    run = _run(tmp_path, "v", 60.0, 61.0, epochs=2)
    records = [{"epoch": 1, "train/loss": 2.0, "test/top1": 50.0, "val/top1": 45.0},
               {"epoch": 2, "train/loss": 1.0, "test/top1": 61.0, "val/top1": 55.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = load_curve(run)
    assert curve is not None and curve.val_epochs == (1, 2) and curve.val_top1 == (45.0, 55.0)
    fig = F.plot_training_curves({"v": curve})
    dashed = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [45.0, 55.0]
