"""``--resume`` goes on only with the files a run was started with.

A checkpoint made on other data or another network would be continued in silence, and its
numbers mixed with the new run's.  Every command that resumes (``adapt``, ``deploy``,
``watch``) records the files it was given and compares them here, in one line per refusal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polystep_neuro.core.errors import PolystepError


def read_saved(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None where there is none to compare with (no file, not
    JSON, not an object: a run from before the files were recorded)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def refuse_other_files(
    out_dir: Path, saved: Mapping[str, Any], now: Mapping[str, Any], flags: Mapping[str, str]
) -> None:
    """PolystepError when a file named by ``flags`` (key -> the flag that gives it) differs
    between the ``saved`` record and the command's ``now``.  A key the record does not have
    (an older run) is not checked."""
    for key, flag in flags.items():
        if key not in saved:
            continue
        before, after = _files(saved[key]), _files(now.get(key))
        if before is None or after is None or _same_files(before, after):
            continue
        raise PolystepError(
            f"--resume: the run in {out_dir} was started with "
            f"{_given(flag, before, with_flag=True)}, this command gives "
            f"{_given(flag, after, with_flag=False)}; give the same {flag}, or start a new run "
            "without --resume (or with another --out)"
        )


def _files(value: Any) -> dict[str, str] | None:
    """A file field as {name: path} ('' for a single file); None if malformed."""
    if value is None:
        return {}
    if isinstance(value, (str, Path)):
        return {"": str(value)}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return None


def _same_files(before: dict[str, str], now: dict[str, str]) -> bool:
    """The same names, and the same file for each where the saved path still names one from
    here (a run resumed from another folder may have saved paths relative to its own: those
    cannot be compared, and are not refused)."""
    if before.keys() != now.keys():
        return False
    return all(
        not Path(old).exists() or Path(old).resolve() == Path(now[name]).resolve()
        for name, old in before.items()
    )


def _given(flag: str, files: dict[str, str], *, with_flag: bool) -> str:
    if not files:
        return f"no {flag}"
    if "" not in files:  # several named files (e.g. --test NAME=FILE ...)
        text = " ".join(f"{name}={path}" for name, path in sorted(files.items()))
    else:
        text = files[""]
    return f"{flag} {text}" if with_flag else text
