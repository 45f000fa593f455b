"""The demo's output folder: OUT/demo.json records the plan, and an OUT made with other settings is refused.

The step runner itself (markers, per-step logs, reuse after a kill) is shared with `richkd study` and lives in
`richkd.steps`; it is re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from richkd.engine.io import write_json_atomic
from richkd.errors import RichKDError
from richkd.steps import StepRunner, capture, quiet_console_logging

__all__ = ["SETTINGS_FILE", "StepRunner", "capture", "check_settings", "quiet_console_logging"]

SETTINGS_FILE = "demo.json"


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record the plan in OUT/demo.json, or refuse an OUT that holds a demo made with other settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("settings")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            saved = None
        current = json.loads(json.dumps(settings))  # tuples -> lists, as read back
        if saved != current:
            changed = sorted(k for k in set(current) | set(saved or {}) if (saved or {}).get(k) != current.get(k))
            raise RichKDError(f"--out {out} holds a demo made with other settings ({', '.join(changed)}): "
                              "rerun it as it was, choose another --out, or delete the folder")
        return
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):  # .tmp: a killed first write
        raise RichKDError(f"--out {out} is not empty and holds no demo: choose another --out (default runs/demo)")
    write_json_atomic(path, {"version": 1, "settings": settings})

