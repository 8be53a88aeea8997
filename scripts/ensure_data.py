"""Make sure the configured image source is present; install Debian's Fashion-MNIST when possible.

Run by `make repro` and `make test`. For `data.source: fashion-mnist` it checks the four IDX files
in `data.fashion_mnist_dir`; when they are missing and this is root on a machine with apt, it
installs the `dataset-fashion-mnist` package, and otherwise prints exactly where to put the files.
`--apt PACKAGE` installs another Debian package the same way (`make browser`: chromium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_config
from pipeline.data import FASHION_MNIST_FILES, fashion_mnist_help

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def missing_files(directory: Path) -> list[Path]:
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    return [directory / name for name in names if not (directory / name).is_file()]


def apt_install(package: str = DEBIAN_PACKAGE) -> bool:
    """Install a Debian package when this is root on a machine with apt; False otherwise."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    print(f"installing Debian's {package} ...", flush=True)
    if subprocess.run(install, env=env).returncode == 0:
        return True
    # A fresh machine may have empty package lists.
    subprocess.run(["apt-get", "update"], env=env)
    return subprocess.run(install, env=env).returncode == 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--apt"] and len(argv) == 2:  # another package the tests use (make browser)
        return 0 if apt_install(argv[1]) else 1
    params = Path("params.yaml")
    try:
        cfg = load_config(params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The tests always exercise the Fashion-MNIST reader, whatever params.yaml selects.
    directory = Path(cfg.data.fashion_mnist_dir)
    if not missing_files(directory):
        return 0
    if apt_install() and not missing_files(directory):
        return 0
    if not missing_files(DEBIAN_DIR) and directory != DEBIAN_DIR:
        print(f"note: Fashion-MNIST is installed in {DEBIAN_DIR}; set data.fashion_mnist_dir to it")
    print("error: " + fashion_mnist_help(directory), file=sys.stderr)
    print("missing: " + ", ".join(str(p) for p in missing_files(directory)), file=sys.stderr)
    return 1 if cfg.data.source == "fashion-mnist" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
