"""`dvc push` / `dvc pull` that first check the remote and say what to do when it is not usable.

    python scripts/dvc_remote.py check [-r NAME]          # only the checks
    python scripts/dvc_remote.py push  [-r NAME] [ARGS]   # checks, then dvc push [-r NAME] [ARGS]
    python scripts/dvc_remote.py pull  [-r NAME] [ARGS]   # checks, then dvc pull [-r NAME] [ARGS]

(`make push` / `make pull` run the last two; extra dvc arguments go in ARGS="...".)

Why: DVC's own messages are clear for "no remote at all" on `dvc push`, but not for the rest.
`dvc pull` from a local remote directory that does not exist (a typo, an unmounted drive) prints
"Everything is up to date." and then a checkout failure that blames the cache; `dvc push` to one
silently creates it (a typo then stores everything in a new directory), and a remote whose DVC
plugin is not installed fails with an "unexpected error". The checks, in order:

1. a remote is configured (`dvc remote list`), and a default is set or ``-r`` names one;
2. a local remote (a path or ``file://``) exists; for push, at least its parent directory
   (a first push creates the remote directory itself);
3. the DVC plugin of a cloud remote is importable (``dvc[s3]``, ``dvc[gs]``, ``dvc[azure]``, ...);
4. the committed ``.dvc/config`` holds no secret-looking option (credentials belong in
   ``.dvc/config.local`` via ``dvc remote modify --local``, or in environment variables).

A failed check exits 2 with the fix; otherwise dvc's own exit status is returned.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

README = "README.md, section \"Sharing results\""
# URL scheme -> (pip extra of dvc, the plugin module that extra installs)
PLUGINS = {
    "s3": ("s3", "dvc_s3"),
    "gs": ("gs", "dvc_gs"),
    "azure": ("azure", "dvc_azure"),
    "ssh": ("ssh", "dvc_ssh"),
    "hdfs": ("hdfs", "dvc_hdfs"),
    "webhdfs": ("webhdfs", "dvc_webhdfs"),
    "oss": ("oss", "dvc_oss"),
    "gdrive": ("gdrive", "dvc_gdrive"),
    "webdav": ("webdav", "dvc_webdav"),
    "webdavs": ("webdav", "dvc_webdav"),
}
# Option names that hold credentials (case-insensitive, matched as whole option names).
SECRET_OPTIONS = re.compile(
    r"^(access_key_id|secret_access_key|session_token|token|password|pass|key_secret|"
    r"credentialpath|gdrive_client_secret|gdrive_service_account_json_file_path|"
    r"account_key|sas_token|connection_string|client_secret|keyfile|key_file|passphrase)$",
    re.IGNORECASE,
)


class RemoteProblem(Exception):
    """A remote that cannot work as configured; the message says how to fix it."""


def project_root(start: Path | None = None) -> Path:
    """The DVC project around ``start`` (default: the working directory), as dvc finds it."""
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / ".dvc").is_dir():
            return directory
    raise RemoteProblem(f"{start} is not inside a DVC project (no .dvc directory)")


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The dvc of this interpreter (its plugins are the ones checked below). A wide COLUMNS: off a
    terminal dvc's console wraps at 80 columns, which would split a long remote URL over lines."""
    env = {**os.environ, "COLUMNS": "100000"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


REMOTE_LINE = re.compile(r"^(\S+)\s+(.*?)(\s+\(default\))?$")


def list_remotes(cwd: Path) -> tuple[dict[str, str], str | None]:
    """``({name: url}, default name or None)`` from ``dvc remote list`` (every config level, the
    local ``.dvc/config.local`` included; local paths come back absolute)."""
    result = dvc("remote", "list", cwd=cwd)
    if result.returncode != 0:
        raise RemoteProblem(f"`dvc remote list` failed:\n{result.stderr.strip()}")
    remotes, default = {}, None
    for line in result.stdout.splitlines():
        match = REMOTE_LINE.match(line.strip())
        if match:
            remotes[match[1]] = match[2]
            if match[3]:
                default = match[1]
    return remotes, default


def local_path(url: str, cwd: Path) -> Path | None:
    """The directory of a local remote, or None for a remote with another scheme."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if "://" in url or (parsed.scheme and len(parsed.scheme) > 1):  # "C:\\..." is a path
        return None
    path = Path(url).expanduser()
    return path if path.is_absolute() else cwd / path


def secret_options(config: Path) -> list[str]:
    """``section: option`` of every secret-looking option in a DVC config file."""
    if not config.is_file():
        return []
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(config)
    return [f"{section}: {option}" for section in parser.sections() for option in parser[section]
            if SECRET_OPTIONS.match(option)]


def check(command: str, remote: str | None, cwd: Path) -> str:
    """The name of the remote to use; raises :class:`RemoteProblem` saying what to do."""
    leaked = secret_options(cwd / ".dvc" / "config")
    if leaked:
        raise RemoteProblem(
            f".dvc/config (committed to git) holds credentials: {', '.join(leaked)}.\n"
            "Move each into the git-ignored .dvc/config.local:\n"
            "    dvc remote modify --local <remote> <option> <value>\n"
            "and remove it from .dvc/config (`dvc remote modify --unset <remote> <option>`), "
            "or use the cloud's environment variables instead.")
    remotes, default = list_remotes(cwd)
    if not remotes:
        raise RemoteProblem(
            "No DVC remote is configured. Add one and make it the default, e.g.\n"
            "    dvc remote add -d storage /mnt/shared/kamig-dvc      # a directory everyone can reach\n"
            "    dvc remote add -d storage s3://bucket/kamig           # needs: pip install 'dvc[s3]'\n"
            f"then commit .dvc/config. See {README}.")
    name = remote or default
    if name is None:
        raise RemoteProblem(
            f"No default DVC remote is set; configured: {', '.join(sorted(remotes))}.\n"
            f"Set one with `dvc remote default <name>`, or name it: -r <name>. See {README}.")
    if name not in remotes:
        raise RemoteProblem(f"There is no DVC remote called {name!r}; configured: "
                            f"{', '.join(sorted(remotes))}. See `dvc remote list`.")
    url = remotes[name]
    directory = local_path(url, cwd)
    if directory is not None:
        if directory.exists() and not directory.is_dir():
            raise RemoteProblem(f"DVC remote {name!r} is {directory}, which is not a directory.")
        if not directory.is_dir():
            parent_ok = directory.parent.is_dir()
            if command != "push" or not parent_ok:
                what = "pull from" if command == "pull" else "push to"
                raise RemoteProblem(
                    f"DVC remote {name!r} is the local directory {directory}, which does not exist"
                    f"{'' if parent_ok else ' (nor does its parent)'}: nothing to {what}.\n"
                    "Is the drive or network share mounted, and is the path right? Fix the path with\n"
                    f"    dvc remote modify {name} url <directory>\n"
                    "(for push, the remote directory itself may be new: its parent must exist).")
            print(f"note: DVC remote {name!r} ({directory}) does not exist yet: this push creates it",
                  file=sys.stderr)
        return name
    scheme = urlparse(url).scheme
    if scheme in PLUGINS:
        extra, module = PLUGINS[scheme]
        if importlib.util.find_spec(module) is None:
            raise RemoteProblem(
                f"DVC remote {name!r} ({url}) needs DVC's {scheme} support, which is not installed:\n"
                f"    pip install 'dvc[{extra}]'\n"
                "(into the project's environment: .venv/bin/python -m pip install ...).")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("check", "push", "pull"))
    parser.add_argument("-r", "--remote", help="the remote to use (default: the default remote)")
    args, passthrough = parser.parse_known_args(argv)
    try:
        root = project_root()
        name = check(args.command, args.remote, root)
    except RemoteProblem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"DVC remote {name!r} looks usable")
        return 0
    result = subprocess.run([sys.executable, "-m", "dvc", args.command, "-r", name, *passthrough], cwd=root)
    if result.returncode != 0 and args.command == "pull":
        print(f"hint: if files are missing on remote {name!r}, whoever made them has not run "
              "`dvc push` (after their last `dvc repro` / `dvc exp run`) yet.", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
