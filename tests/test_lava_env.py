"""The Lava venv's marker: lava-dl is opt-in, recorded, kept by a later plain setup, and
asked for by name when missing (no venv is built here: the checks stop before pip)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices import lava_env


def _fake_venv(tmp_path: Path, requirements: tuple[str, ...], versions: dict) -> Path:
    venv = tmp_path / "venv"
    python = lava_env.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.write_text("")
    marker = {
        "format": lava_env.MARKER_FORMAT,
        "requirements": list(requirements),
        "versions": versions,
    }
    (venv / lava_env.MARKER).write_text(json.dumps(marker))
    return venv


def test_requirements_add_lava_dl_only_when_asked() -> None:
    assert lava_env.requirements(False) == ("lava-nc==0.10.0", "pyzmq", "numpy<2")
    assert lava_env.requirements(True) == lava_env.requirements(False) + ("lava-dl==0.6.0",)


def test_marker_decides_what_is_missing(tmp_path: Path) -> None:
    base = _fake_venv(tmp_path, lava_env.requirements(False), {"lava-nc": "0.10.0"})
    marker = lava_env.read_marker(base)
    assert lava_env._up_to_date(base, marker, with_lava_dl=True) == "lava-dl is not installed"
    assert not lava_env.lava_dl_installed(base)
    other = _fake_venv(tmp_path / "o", ("lava-nc==0.9.0",), {})
    assert lava_env._up_to_date(other, lava_env.read_marker(other)) == (
        "it was made for other requirements"
    )
    with_dl = _fake_venv(tmp_path / "d", lava_env.requirements(True), {"lava-dl": "0.6.0"})
    assert lava_env.lava_dl_installed(with_dl)


def test_installed_versions_list_lava_dl_only_where_installed() -> None:
    venv = lava_env.find_lava_env()
    if venv is None:
        pytest.skip("no Lava env here")
    versions = lava_env.installed_versions(venv)
    assert versions is not None
    assert set(lava_env.CHECKED) <= set(versions)
    assert ("lava-dl" in versions) == lava_env.lava_dl_installed(venv)
    assert versions == lava_env.read_marker(venv)["versions"]  # type: ignore[index]
