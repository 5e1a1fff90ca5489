"""Pinned command-line clients from npm, installed by the test setup into the git-ignored .clients/ folder.

Each client gets its own folder (`.clients/<name>/`) with exactly the pinned packages; a folder whose
install is complete and pinned as asked is reused. Test processes running at once (the two halves of
`.ci/run`, other checkouts sharing `.clients`) take a file lock per client, so one installs and the
others wait for it and then reuse its folder. In CI (CI or REQUIRE_SERVICES=1 set) a client that
cannot be installed fails the test; elsewhere, without npm, the test is skipped with the reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENTS_DIR = Path(__file__).resolve().parent.parent / ".clients"
_REQUIRED = os.environ.get("REQUIRE_SERVICES") == "1" or bool(os.environ.get("CI"))


def _unavailable(reason: str) -> None:
    if _REQUIRED:
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def install_npm_client(
    name: str, packages: dict[str, str], *, binary: str | None = None, provides: str | None = None
) -> Path:
    """The folder of `name` with `packages` ({package: exact version}) installed; installs it if needed.

    `binary` (e.g. "claude") must then exist in node_modules/.bin; for a package without one (a
    library such as axe-core), `provides` names the file it must have put under node_modules/.
    """
    folder = CLIENTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    with (CLIENTS_DIR / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        return _install_unlocked(folder, packages, binary=binary, provides=provides)


def _install_unlocked(folder: Path, packages: dict[str, str], *, binary: str | None, provides: str | None) -> Path:
    name = folder.name
    stamp = folder / "installed.json"
    wanted = json.dumps(packages, sort_keys=True)
    expected = folder / "node_modules" / (f".bin/{binary}" if binary else str(provides))
    if stamp.exists() and stamp.read_text() == wanted and expected.exists():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed: cannot install the pinned " + name)
    stamp.unlink(missing_ok=True)
    (folder / "package.json").write_text(json.dumps({"name": f"writingmate-{name}-tests", "private": True}))
    specs = [f"{package}@{version}" for package, version in packages.items()]
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--prefix", str(folder), *specs],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        _unavailable(f"npm could not install {' '.join(specs)}: {output.decode(errors='replace')[-2000:]}")
    if not expected.exists():
        _unavailable(f"npm installed {' '.join(specs)} but {expected.relative_to(folder)} is missing")
    stamp.write_text(wanted)
    return folder
