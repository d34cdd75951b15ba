"""Offline install bundles for gateways: ``python -m central.gateway_bundle`` (``make
gateway-bundle``).

A gateway sits on a metered 3G link: it should not fetch packages from PyPI, and a field
engineer may install it from a USB stick. A bundle is one directory and its ``.tar.gz`` per
platform (``x86_64``, ``aarch64``: a Raspberry Pi 3/4/5 on 64-bit Raspberry Pi OS), holding

* ``wheels/``: the project's wheel and binary wheels of the edge dependencies (the ``edge``
  extra of ``pyproject.toml``, the one list) for CPython 3.11 on that platform;
* ``install.sh``: venv in ``/opt/eiot/venv`` from those wheels only (``pip --no-index``), the
  ``eiot`` system user, ``/etc/eiot/agent.toml`` from the example, the systemd unit;
* ``eiot-agent.service``, ``agent.toml.example`` (``deploy/gateway/``) and
  ``gateway-install.md`` (``docs/``); ``SHA256SUMS`` of everything.

Each platform's wheel set is checked complete with pip's own resolver for that platform (offline,
``--no-index``, ``--only-binary``) before its archive is written.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"  # Raspberry Pi OS 12 (bookworm) and Debian 12
# manylinux tags a glibc 2.36 system (bookworm) accepts, newest first
_GLIBC_MINORS = (36, 35, 34, 31, 28, 27, 26, 24, 17)
PLATFORMS: dict[str, list[str]] = {
    arch: [f"manylinux_2_{n}_{arch}" for n in _GLIBC_MINORS] + [f"manylinux2014_{arch}"]
    for arch in ("x86_64", "aarch64")
}
DEPLOY = REPO / "deploy" / "gateway"
PACKAGES = ("edge_agent", "central", "ml", "simulator", "bench")


@dataclass(frozen=True)
class Bundle:
    platform: str
    directory: Path
    archive: Path

    @property
    def wheels(self) -> list[Path]:
        return sorted((self.directory / "wheels").glob("*.whl"))

    @property
    def archive_bytes(self) -> int:
        return self.archive.stat().st_size


def edge_requirements() -> list[str]:
    """The edge extra of ``pyproject.toml``: what a gateway runs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["edge"])


def copy_project(dest: Path) -> Path:
    """The installable part of the repository, without caches or build leftovers (pip must not
    write egg-info or build/ into the working tree)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    return dest


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _platform_args(platform: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in PLATFORMS[platform]:
        args += ["--platform", tag]
    return args


def build_project_wheel(dest: Path) -> Path:
    """The project's own wheel (pure Python), built from a clean copy."""
    with tempfile.TemporaryDirectory() as tmp:
        src = copy_project(Path(tmp) / "src")
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(src))
    (wheel,) = dest.glob("energy_iot_pipeline-*.whl")
    return wheel


def check_complete(platform: str, wheels: Path) -> None:
    """pip's resolver, for ``platform`` and offline: every edge dependency has a wheel here."""
    with tempfile.TemporaryDirectory() as target:
        _pip(
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            target,
            *_platform_args(platform),
            "energy-iot-pipeline[edge]",
        )


def build(platform: str, out: Path, project_wheel: Path) -> Bundle:
    name = f"eiot-gateway-{project_wheel.name.split('-')[1]}-{platform}"
    directory = out / name
    if directory.exists():
        shutil.rmtree(directory)
    wheels = directory / "wheels"
    wheels.mkdir(parents=True)
    shutil.copy2(project_wheel, wheels / project_wheel.name)
    print(f"{platform}: downloading the edge wheels for CPython {PYTHON_VERSION}", flush=True)
    _pip(
        "download",
        "--quiet",
        "--dest",
        str(wheels),
        *_platform_args(platform),
        *edge_requirements(),
    )
    check_complete(platform, wheels)
    for source in (
        DEPLOY / "install.sh",
        DEPLOY / "eiot-agent.service",
        DEPLOY / "agent.toml.example",
    ):
        shutil.copy2(source, directory / source.name)
    shutil.copy2(REPO / "docs" / "gateway-install.md", directory / "gateway-install.md")
    sums = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(directory)}"
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]
    (directory / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    archive = out / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=name)
    return Bundle(platform, directory, archive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m central.gateway_bundle",
        description="Build offline install bundles of the gateway agent (wheels for CPython "
        f"{PYTHON_VERSION}, install.sh, the systemd unit), one per platform.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "var" / "gateway-bundle",
        help="where the bundles and their archives go (default var/gateway-bundle)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        choices=sorted(PLATFORMS),
        help="platform to build for (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project_wheel = build_project_wheel(Path(tmp))
        bundles = [build(p, args.out, project_wheel) for p in args.platform or sorted(PLATFORMS)]
    for b in bundles:
        unpacked = sum(p.stat().st_size for p in b.directory.rglob("*") if p.is_file())
        print(
            f"{b.platform}: {b.archive} {b.archive_bytes / 1e6:.1f} MB "
            f"({unpacked / 1e6:.1f} MB unpacked, {len(b.wheels)} wheels)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
