"""Pinned command-line clients from npm, installed by the tests into the git-ignored `.clients/` folder.

Under CI (`CI` set) or `REQUIRE_SERVICES=1` a client that cannot be installed is a failure; elsewhere
the tests that need it are skipped with the reason (no npm, no registry).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENTS_DIR = Path(__file__).resolve().parents[1] / ".clients"
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("REQUIRE_SERVICES") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (required under CI / REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def npm_client(package: str, version: str, binary: str) -> Path:
    """The path of `binary` from `package@version`, installing it first if this checkout lacks it."""
    prefix = CLIENTS_DIR / f"{package.replace('/', '+').lstrip('@')}-{version}"
    path = prefix / "node_modules" / ".bin" / binary
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None:
        _unavailable(f"npm is not installed, so {package}@{version} cannot be installed")
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"{package}@{version}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        _unavailable(f"npm could not install {package}@{version}: {output.decode(errors='replace')[-500:]}")
    if not path.exists():
        _unavailable(f"{package}@{version} installed without a `{binary}` command")
    return path
