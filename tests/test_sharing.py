"""Sharing results through a DVC remote (README "Sharing results").

* e2e: `dvc repro` + push in one copy of the project, `git clone` + `dvc pull` in another, which
  then has nothing to re-run;
* the committed ``.dvc/config`` never holds credentials;
* an unusable remote (none, no default, a missing directory, a missing plugin) is reported with
  the fix, by ``scripts/dvc_remote.py`` (``make push`` / ``make pull``) and, where it is clear
  already, by DVC itself.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, copy_repo, run

WRAPPER = REPO_ROOT / "scripts" / "dvc_remote.py"
# Any option whose name contains one of these (case-insensitive) is a credential.
SECRET_WORDS = ("access_key_id", "secret_access_key", "session_token", "token", "password", "passwd",
                "key_secret", "credentialpath", "secret", "passphrase", "account_key", "sas_token",
                "connection_string", "keyfile", "service_account_json")


def secret_options(text: str) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(text)
    return [f"{section}.{option}" for section in parser.sections() for option in parser[section]
            if any(word in option.lower() for word in SECRET_WORDS)]


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


# --------------------------------------------------------------------------------------------
# No credentials in the committed config
# --------------------------------------------------------------------------------------------


def test_the_secret_check_itself_catches_credentials():
    text = ('[core]\n    remote = store\n[\'remote "store"\']\n    url = s3://bucket/x\n'
            "    Secret_Access_Key = abc\n    ACCESS_KEY_ID = def\n    region = eu-west-1\n"
            "[\'remote \"box\"\']\n    url = ssh://host/x\n    password = hunter2\n"
            "[\'remote \"gcs\"\']\n    url = gs://b/x\n    credentialpath = key.json\n")
    assert sorted(secret_options(text)) == sorted([
        "'remote \"store\"'.secret_access_key", "'remote \"store\"'.access_key_id",
        "'remote \"box\"'.password", "'remote \"gcs\"'.credentialpath"])


def test_committed_dvc_config_holds_no_secret():
    committed = subprocess.run(["git", "show", "HEAD:.dvc/config"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout
    for text in (committed, (REPO_ROOT / ".dvc" / "config").read_text()):
        assert secret_options(text) == [], (
            "credentials in .dvc/config: put them in .dvc/config.local (dvc remote modify --local) "
            "or environment variables")


def test_local_config_is_git_ignored():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO_ROOT)
    assert ignored.returncode == 0


# --------------------------------------------------------------------------------------------
# Unusable remotes: clear messages
# --------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    """A small git + DVC project with one tracked file, its data in the cache."""
    root = tmp_path / "project"
    root.mkdir()
    run(["git", "init", "-q", "-b", "main"], root)
    run(["dvc", "init", "-q"], root)
    (root / "data.txt").write_text("shared result\n")
    run(["dvc", "add", "-q", "data.txt"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "data"], root)
    return root


def wrapper(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(WRAPPER), *args], root, check=False)


def test_dvc_itself_is_clear_when_no_remote_exists(project):
    # Documented in the README: this message needs no wrapper.
    result = run(["dvc", "push"], project, check=False)
    assert result.returncode != 0
    assert "no remote specified" in result.stderr and "dvc remote add -d" in result.stderr


def test_no_remote(project):
    for command in ("push", "pull", "check"):
        result = wrapper(project, command)
        assert result.returncode == 2
        assert "No DVC remote is configured" in result.stderr and "dvc remote add -d" in result.stderr


def test_no_default_remote(project, tmp_path):
    run(["dvc", "remote", "add", "store", str(tmp_path / "store")], project)
    result = wrapper(project, "pull")
    assert result.returncode == 2
    assert "No default DVC remote" in result.stderr and "dvc remote default" in result.stderr
    assert "store" in result.stderr
    # Naming it works: push creates the new remote directory under an existing parent.
    assert wrapper(project, "push", "-r", "store").returncode == 0
    assert any((tmp_path / "store").rglob("*"))
    result = wrapper(project, "check", "-r", "nope")
    assert result.returncode == 2 and "no DVC remote called 'nope'" in result.stderr


def test_missing_local_remote_directory(project, tmp_path):
    # What DVC alone does here: `dvc pull` says "Everything is up to date." and blames the cache,
    # never naming the missing directory.
    missing = tmp_path / "unmounted" / "store"
    run(["dvc", "remote", "add", "-d", "store", str(missing)], project)
    (project / "data.txt").unlink()
    run(["rm", "-rf", ".dvc/cache"], project)
    plain = run(["dvc", "pull"], project, check=False)  # as the README describes it
    assert plain.returncode != 0 and "Everything is up to date." in plain.stdout
    assert str(missing) not in plain.stdout + plain.stderr
    pulled = wrapper(project, "pull")
    assert pulled.returncode == 2
    assert f"local directory {missing}, which does not exist" in pulled.stderr
    assert "dvc remote modify store url" in pulled.stderr
    pushed = wrapper(project, "push")  # not even the parent exists: a typo, not a first push
    assert pushed.returncode == 2 and "nor does its parent" in pushed.stderr
    assert not missing.parent.exists()  # nothing was created


def test_remote_without_its_dvc_plugin(project):
    scheme, extra, module = "azure", "azure", "dvc_azure"
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    run(["dvc", "remote", "add", "-d", "cloud", f"{scheme}://container/path"], project)
    result = wrapper(project, "push")
    assert result.returncode == 2 and f"pip install 'dvc[{extra}]'" in result.stderr


def test_wrapper_refuses_credentials_in_the_committed_config(project):
    run(["dvc", "remote", "add", "-d", "cloud", "s3://bucket/kamig"], project)
    run(["dvc", "remote", "modify", "cloud", "secret_access_key", "hunter2"], project)
    result = wrapper(project, "push")
    assert result.returncode == 2
    assert "holds credentials" in result.stderr and "secret_access_key" in result.stderr
    assert "dvc remote modify --local" in result.stderr
    # The same option in the git-ignored local config is the right place: past that check
    # (what may still stop it is only the missing S3 plugin).
    run(["dvc", "remote", "modify", "--unset", "cloud", "secret_access_key"], project)
    run(["dvc", "remote", "modify", "--local", "cloud", "secret_access_key", "hunter2"], project)
    assert "hunter2" not in (project / ".dvc" / "config").read_text()
    assert "hunter2" in (project / ".dvc" / "config.local").read_text()
    checked = wrapper(project, "check")
    assert "holds credentials" not in checked.stderr
    assert checked.returncode == 0 or "pip install 'dvc[s3]'" in checked.stderr


# --------------------------------------------------------------------------------------------
# The round trip on the tiny preset
# --------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_push_then_clone_and_pull_needs_no_rerun(tmp_path, reproduced_tiny_repo):
    # A project after `dvc repro` and a commit of its results (the session's shared run).
    source = copy_repo(reproduced_tiny_repo.path, tmp_path / "source")
    assert "Running stage 'prepare'" in reproduced_tiny_repo.output
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], source)
    run(["git", "add", "-A"], source)
    run(["git", "commit", "-q", "-m", "the remote"], source)
    pushed = run([sys.executable, str(source / "scripts" / "dvc_remote.py"), "push"], source)
    assert "pushed" in pushed.stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(source), str(clone)], tmp_path)
    assert not (clone / "models").exists() or not any((clone / "models").iterdir())
    run(["dvc", "pull"], clone)
    for name in ("data/tokens/meta.json", "data/graphs/cooccurrence.parquet", "models/tokenizer"):
        assert (clone / name).exists(), name
    assert (clone / "data/tokens/meta.json").read_bytes() == (source / "data/tokens/meta.json").read_bytes()

    status = run(["dvc", "status"], clone)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    again = run(["dvc", "repro"], clone)
    assert stages_run(again.stdout) == set(), again.stdout
    assert "didn't change, skipping" in again.stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
