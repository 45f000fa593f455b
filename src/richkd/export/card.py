"""The model card (model_card.json): what an exported model is, how to feed it, and where it came from.

Readers need only arch, classes and input; the rest (training method, teacher, accuracy with its run id,
hashes) is provenance for people. `read_run` gathers that provenance from a run directory, if there is one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from richkd import __version__
from richkd.errors import RichKDError
from richkd.export.images import InputSpec

log = logging.getLogger(__name__)

CARD_FORMAT = "richkd-model-card"
CARD_VERSION = 1
CARD_NAME = "model_card.json"
CHOSEN_ON_TEST_NOTE = ("percent on the run's test split; best_* is chosen on that same test split (reference "
                       "protocol, optimistic): best (chosen on test)")
CHOSEN_ON_VAL_NOTE = ("percent on the run's test split; best_* is the test accuracy at the epoch chosen on held-out "
                      "training rows (data.val_split, best_val_top1): best (chosen on val)")


@dataclass(frozen=True)
class RunInfo:
    """What a run directory says about the checkpoint in it (each part empty when absent)."""

    dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml as saved, nested sections
    summary: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    def get(self, dotted: str) -> Any:
        """A config value such as "data.name"; None when the run has no such key."""
        node: Any = self.config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


def read_run(checkpoint: Path) -> RunInfo:
    """The run directory of a `richkd train` checkpoint: config.yaml, summary.json, run.json beside it.

    config.yaml is read as plain YAML, not through load_config: a few provenance keys are all that is needed,
    and a run saved under an older config schema must still export (load_config rejects renamed keys).
    """
    run_dir = checkpoint.resolve().parent
    if not (run_dir / "config.yaml").is_file():
        return RunInfo()
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        log.warning("ignoring %s (%s)", run_dir / "config.yaml", str(err).splitlines()[0])
        config = {}
    return RunInfo(
        dir=run_dir,
        config=config if isinstance(config, dict) else {},
        summary=_json(run_dir / "summary.json"),
        run=_json(run_dir / "run.json"),
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def build_card(
    *,
    arch: str,
    classes: tuple[str, ...],
    spec: InputSpec,
    source: Path,
    source_sha256: str,
    run: RunInfo,
    params: int,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of a model exported from `source`. Re-exporting an exported model keeps its provenance."""
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "arch": arch,
        "num_classes": len(classes),
        "classes": list(classes),
        "input": spec.to_dict(),
        "params": params,
        "training": _training(run),
        "data": _folder_policy(run),
        "accuracy": _accuracy(run, source),
        "run": _run(run),
        "source": {"file": str(source.resolve()), "sha256": source_sha256},
        "richkd_version": __version__,
    }
    if previous is not None:  # re-export: the original provenance is the true one
        for key in ("training", "accuracy", "run", "source", "data"):
            card[key] = previous.get(key)
    return card


def _folder_policy(run: RunInfo) -> dict[str, Any] | None:
    """An image-folder model's data.* policy (size, resize, split, class names), so `richkd eval` of the exported
    model reads the folder as the run did; the unreadable files its run skipped, as run.json lists them."""
    if run.get("data.name") != "imagefolder":
        return None
    keys = ("root", "image_size", "resize", "split_fraction", "split_seed", "skip_bad", "class_names")
    policy = {key: run.get(f"data.{key}") for key in keys}
    folder = run.run.get("image_folder") or {}
    policy["skipped_bad_files"] = folder.get("skipped_bad_files", []) if isinstance(folder, dict) else []
    return policy


def _training(run: RunInfo) -> dict[str, Any] | None:
    if not run.config:
        return None
    cache = run.run.get("target_cache") or {}
    teacher_ckpt = run.get("model.teacher_checkpoint")
    return {
        "method": run.get("distill.method"),
        "loss": run.run.get("loss") or run.summary.get("loss"),
        "teacher": run.get("model.teacher"),
        "teacher_checkpoint": str(Path(teacher_ckpt).resolve()) if teacher_ckpt else None,
        "vlm_teacher": cache.get("model_label") or cache.get("model_id"),
        "dataset": run.get("data.name"),
        "dataset_source": run.run.get("dataset_source") or run.get("data.root"),
        "train_rows": run.run.get("train_rows"),
        "epochs": run.get("train.epochs"),
        "seed": run.get("seed"),
    }


def _accuracy(run: RunInfo, source: Path) -> dict[str, Any] | None:
    s = run.summary
    if not s:
        return None
    this = "best" if source.name == "model_best.pt" else "last"
    chosen = str(s.get("best_selected_on", "test"))  # runs before data.val_split all selected on test
    return {
        "this_checkpoint": this,
        "top1": s.get(f"{this}_top1"),
        "best_top1": s.get("best_top1"),
        "best_epoch": s.get("best_epoch"),
        "best_selected_on": chosen,
        **({"best_val_top1": s.get("best_val_top1")} if chosen == "val" else {}),
        "last_top1": s.get("last_top1"),
        "epochs": s.get("epochs"),
        "split": run.get("data.test_split") or "test",
        "note": CHOSEN_ON_VAL_NOTE if chosen == "val" else CHOSEN_ON_TEST_NOTE,
    }


def _run(run: RunInfo) -> dict[str, Any] | None:
    if run.dir is None:
        return None
    return {
        "id": run.dir.name,
        "dir": str(run.dir),
        "git_sha": run.run.get("git_sha"),
        "torch": run.run.get("torch"),
    }


def read_card(path: Path) -> dict[str, Any]:
    """A model card, checked for the fields a reader needs; anything wrong is a one-line error."""
    if not path.is_file():
        raise RichKDError(f"model card {path} not found: keep {CARD_NAME} next to the exported model")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RichKDError(f"model card {path} is not valid JSON ({str(err)[:80]}); re-export the model") from None
    check_card(card, str(path))
    return card  # type: ignore[no-any-return]


def check_card(card: Any, where: str) -> None:
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise RichKDError(f"{where} is not a richkd model card; write one with `richkd export`")
    if card.get("version") != CARD_VERSION:
        raise RichKDError(f"{where} has card version {card.get('version')!r}; this richkd reads {CARD_VERSION}")
    classes = card.get("classes")
    if not isinstance(card.get("arch"), str) or not isinstance(classes, list) or not classes:
        raise RichKDError(f"model card {where} lacks arch or classes; re-export the model")
    if card.get("num_classes", len(classes)) != len(classes):
        raise RichKDError(
            f"model card {where} says num_classes={card.get('num_classes')} but lists {len(classes)} classes"
        )
    InputSpec.from_dict(card.get("input"), f"model card {where}")


def card_spec(card: dict[str, Any], where: str) -> InputSpec:
    return InputSpec.from_dict(card["input"], f"model card {where}")
