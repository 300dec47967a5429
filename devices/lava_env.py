"""The Lava venv: Python 3.10 with lava-nc 0.10.0, pyzmq, numpy<2 and this project.

lava-nc 0.10 imports only on Python 3.10 and pins numpy<2, while the host runs Python >=3.11
with torch and numpy 2; so Lava runs in its own venv, and the host talks to a device server
started with that venv's python (``devices.lava``).  ``polystep-neuro devices setup-lava``
calls ``setup_lava_env``; ``devices list`` calls ``lava_env_status``.

Where the venv lives: ``$POLYSTEP_LAVA_VENV`` if set, else ``<checkout>/.venv-lava`` when this
package runs from a source checkout, else ``<user cache>/polystep-neuro/venv-lava``.
A marker file in the venv records what was installed, so a second setup is a quick no-op.

``--with-lava-dl`` (``with_lava_dl=True``) also installs lava-dl 0.6.0, whose netx loader
runs the HDF5 networks ``polystep_neuro.run.interop.netx`` writes.  It is opt-in because lava-dl
requires torch 2.3 (its import chain loads slayer, which imports torch), and PyPI's torch
2.3 for Linux brings its CUDA libraries: about 3 GB more in the venv.  The marker records
whether it is there; a later plain setup keeps it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from polystep_neuro.core.errors import DeviceUnavailable

ENV_VAR = "POLYSTEP_LAVA_VENV"
MARKER = "polystep-lava-env.json"
MARKER_FORMAT = 1
LOCK_NAME = ".polystep-setup.lock"
REQUIREMENTS = ("lava-nc==0.10.0", "pyzmq", "numpy<2")
LAVA_DL_REQUIREMENTS = ("lava-dl==0.6.0",)
# distributions whose versions the marker records (lava-dl only where installed)
CHECKED = ("lava-nc", "numpy", "pyzmq")
OPTIONAL_CHECKED = ("lava-dl",)
PACKAGES = ("polystep_neuro", "devices", "simulators")

Progress = Callable[[str], None]


class LavaEnvError(DeviceUnavailable):
    """The Lava venv cannot be created or used; the message says what to do."""


# ----------------------------------------------------------------------------- locations
def project_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "polystep-neuro"' in pyproject.read_text():
        return root
    return None


def default_venv() -> Path:
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    root = project_root()
    if root is not None:
        return root / ".venv-lava"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "polystep-neuro" / "venv-lava"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# ----------------------------------------------------------------------------- python 3.10
def python310_candidates(explicit: str | None = None) -> list[str]:
    """--python, then python3.10 on PATH, then pyenv's 3.10s (newest first), then
    /usr/bin/python3.10."""
    if explicit:
        return [explicit]
    found: list[str] = []
    on_path = shutil.which("python3.10")
    if on_path:
        found.append(on_path)
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    pyenv = glob.glob(str(pyenv_root / "versions" / "3.10*" / "bin" / "python3.10"))
    found += sorted(pyenv, key=_version_key, reverse=True)
    found.append("/usr/bin/python3.10")
    unique: list[str] = []
    for candidate in found:
        if candidate not in unique and Path(candidate).exists():
            unique.append(candidate)
    return unique


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name  # ~/.pyenv/versions/3.10.13/bin/python3.10
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def check_python310(python: str) -> str | None:
    """None if ``python`` is a usable Python 3.10 (with venv + ensurepip), else why not."""
    code = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        return f"cannot run {python}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return f"{python} did not answer within 60 s"
    if out.returncode != 0:
        if "ensurepip" in out.stderr or "venv" in out.stderr:
            return f"{python} lacks the venv module (on Debian/Ubuntu: apt install python3.10-venv)"
        return f"{python} failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}"
    version = out.stdout.strip()
    if version != "3.10":
        return f"{python} is Python {version}; lava-nc 0.10 needs Python 3.10"
    return None


def find_python310(explicit: str | None = None) -> str:
    """A usable Python 3.10 interpreter, or LavaEnvError saying how to get one."""
    problems = []
    for candidate in python310_candidates(explicit):
        why = check_python310(candidate)
        if why is None:
            return candidate
        problems.append(why)
    tried = "; ".join(problems) if problems else "no python3.10 on PATH, in pyenv or /usr/bin"
    raise LavaEnvError(
        f"Lava needs Python 3.10 ({tried}). Install one (e.g. `pyenv install 3.10`, "
        f"`uv python install 3.10`, or your OS package python3.10 + python3.10-venv) and run "
        f"`polystep-neuro devices setup-lava --python /path/to/python3.10`."
    )


# ----------------------------------------------------------------------------- status
def read_marker(venv: Path) -> dict | None:
    try:
        data = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def installed_versions(venv: Path) -> dict[str, str] | None:
    """Versions of the checked distributions as the venv's python sees them (~50 ms); the
    optional ones only where installed."""
    code = (
        "import json, importlib.metadata as m\n"
        "def v(d):\n"
        "    try:\n"
        "        return m.version(d)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        f"found = {{d: v(d) for d in {list(CHECKED + OPTIONAL_CHECKED)!r}}}\n"
        f"print(json.dumps({{d: x for d, x in found.items() if x or d in {list(CHECKED)!r}}}))"
    )
    try:
        out = subprocess.run(
            [str(venv_python(venv)), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return json.loads(out.stdout) if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def requirements(with_lava_dl: bool) -> tuple[str, ...]:
    return REQUIREMENTS + (LAVA_DL_REQUIREMENTS if with_lava_dl else ())


def _up_to_date(venv: Path, marker: dict | None, with_lava_dl: bool = False) -> str | None:
    """None if the venv matches what this version of the project installs, else why not."""
    if marker is None:
        return "not set up"
    if not venv_python(venv).exists():
        return f"its python {venv_python(venv)} is missing"
    made_for = list(marker.get("requirements", []))
    if made_for not in (list(requirements(False)), list(requirements(True))):
        return "it was made for other requirements"
    if with_lava_dl and made_for != list(requirements(True)):
        return "lava-dl is not installed"
    root = project_root()
    if root is not None and marker.get("project") != str(root):
        return f"it runs the project from {marker.get('project')}, not {root}"
    versions = installed_versions(venv)
    if versions is None or versions != marker.get("versions"):
        return "its packages changed since setup"
    return None


def find_lava_env() -> Path | None:
    """The Lava venv if it was set up (marker present, python there), else None."""
    venv = default_venv()
    if read_marker(venv) is not None and venv_python(venv).exists():
        return venv
    return None


def lava_dl_installed(venv: Path) -> bool:
    """Whether setup installed lava-dl (netx) into this venv (per its marker)."""
    marker = read_marker(venv) or {}
    return "lava-dl" in marker.get("versions", {})


def lava_env_status() -> tuple[bool, str]:
    """(usable, why) for `devices list`."""
    venv = default_venv()
    why = _up_to_date(venv, read_marker(venv))
    if why is None:
        marker = read_marker(venv) or {}
        versions = marker.get("versions", {})
        dl = f", lava-dl {versions['lava-dl']}" if "lava-dl" in versions else ""
        lava = versions.get("lava-nc", "?")
        return True, f"Lava env {venv} (Python {marker.get('python', '?')}, lava-nc {lava}{dl})"
    if find_lava_env() is not None:  # the backends run it anyway (they need marker + python)
        return True, (
            f"Lava env {venv}, out of date: {why}; the backends use it as it is; "
            "`polystep-neuro devices setup-lava` brings it up to date"
            + (
                f" (it rewrites {venv}: unset {ENV_VAR} for a venv of this checkout's own)"
                if os.environ.get(ENV_VAR)
                else ""
            )
        )
    return False, (
        f"Lava env {venv}: {why}; run `polystep-neuro devices setup-lava` "
        "(needs Python 3.10; --python PATH to choose one)"
    )


# ----------------------------------------------------------------------------- setup
def setup_lava_env(
    python: str | None = None,
    venv: Path | None = None,
    progress: Progress | None = None,
    *,
    force: bool = False,
    with_lava_dl: bool = False,
) -> Path:
    """Create or update the Lava venv; returns its path.  Idempotent: when the marker says
    everything is installed (and the venv's python agrees) it returns at once.
    ``with_lava_dl``: also install lava-dl (see the module docstring); a venv that already
    has it keeps it.

    Long because it is one ordered procedure (find Python, lock, create, install, verify,
    mark); its steps are the helpers below."""
    say = progress or (lambda message: None)
    venv = Path(venv).expanduser() if venv is not None else default_venv()
    fresh = not venv.exists()
    venv.mkdir(parents=True, exist_ok=True)
    with _lock(venv):
        old = read_marker(venv)
        with_lava_dl = with_lava_dl or (
            not force
            and old is not None
            and list(old.get("requirements", [])) == list(requirements(True))
        )
        wanted = requirements(with_lava_dl)
        if not force:
            why = _up_to_date(venv, old, with_lava_dl)
            if why is None:
                say(f"Lava env {venv} is up to date")
                return venv
            if read_marker(venv) is not None:
                say(f"Lava env {venv} needs an update: {why}")
        start = time.monotonic()
        base = find_python310(python)
        py = venv_python(venv)
        if not py.exists() or check_python310(str(py)) is not None or force:
            foreign = [p for p in venv.iterdir() if p.name != LOCK_NAME]
            if not fresh and foreign and not (venv / "pyvenv.cfg").exists():
                raise LavaEnvError(f"{venv} exists and is not a venv; remove it or choose another")
            say(f"creating venv {venv} with {base}")
            args = [base, "-m", "venv", *(["--clear"] if force else []), str(venv)]
            _run(args, "create the venv")
        say(f"installing {' '.join(wanted)} (a few minutes the first time)")
        _run([str(py), "-m", "pip", "install", "--quiet", *wanted], "install lava-nc")
        root = project_root()
        if root is not None:
            say(f"installing this project from {root} (editable, --no-deps)")
            _run(
                [str(py), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(root)],
                "install the project",
            )
        else:
            say("linking this project's packages into the venv")
            _link_packages(venv, py)
        say("checking that Lava imports")
        imports = "import lava.magma.core.run_configs, zmq, devices.lava_local"
        if with_lava_dl:
            imports += ", lava.lib.dl.netx"
        _run([str(py), "-c", imports], "import Lava in the new env")
        versions = installed_versions(venv)
        if versions is None:
            raise LavaEnvError(f"{py} cannot report its package versions")
        marker = {
            "format": MARKER_FORMAT,
            "python": _python_version(py),
            "base_python": base,
            "requirements": list(wanted),
            "versions": versions,
            "project": str(root) if root is not None else "linked",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (venv / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        say(f"Lava env ready in {time.monotonic() - start:.0f} s: {venv}")
        return venv


def _python_version(py: Path) -> str:
    out = subprocess.run(
        [str(py), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def _link_packages(venv: Path, py: Path) -> None:
    """An installed (non-checkout) project: a .pth pointing at symlinks to its packages."""
    src = venv / "polystep-src"
    src.mkdir(exist_ok=True)
    for name in PACKAGES:
        target = Path(__file__).resolve().parents[1] / name
        link = src / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    (Path(out.stdout.strip()) / "polystep_neuro_src.pth").write_text(str(src) + "\n")


def _run(cmd: list[str], what: str) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LavaEnvError(f"could not {what}: {exc}") from None
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise LavaEnvError(f"could not {what} (`{' '.join(cmd)}` exited {out.returncode}):\n{tail}")


@contextlib.contextmanager
def _lock(venv: Path) -> Iterator[None]:
    """One setup at a time per venv (parallel CI jobs, two terminals)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: Lava does not run there anyway
        yield
        return
    with open(venv / LOCK_NAME, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
