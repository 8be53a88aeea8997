"""DVC's code deps must cover what each stage really imports, or DVC serves stale outputs.

For every stage in ``dvc.yaml`` (``foreach`` expanded) this test finds the entry modules in its
``cmd`` (``python -m pipeline.launch STAGE`` runs ``pipeline.stages.STAGE``), computes the
transitive closure of the ``pipeline`` modules they import - module-level and function-local
imports alike, package ``__init__`` files included, ``if TYPE_CHECKING:`` blocks excluded since
they never run - and fails when a module that can change the stage's outputs is not covered by
one of the stage's ``deps`` (the file itself or a folder above it).

It reads the source with :mod:`ast` and imports nothing, so it also catches imports on paths the
other tests never take.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT

PACKAGE = "pipeline"

# Modules a stage imports that cannot change its outputs, so that editing them must not re-run
# the pipeline. Each needs a reason; anything not listed here must be a dep.
EXEMPT = {
    # Error classes: they change messages, never an output.
    "pipeline/errors.py": "exception types only",
    # The atomic-write helpers: temporary name then rename; the bytes written are the caller's. And
    # file digests: run fingerprints (which checkpoint a run resumes) and printed checksums.
    "pipeline/files.py": "atomic writes of bytes produced elsewhere; file digests",
    # The stage runner: loads the config, reports failures, times the stage.
    "pipeline/runtime.py": "error reporting, logging and the writable-output probe",
    # Progress bars and their refresh rate.
    "pipeline/progress.py": "progress display only",
    # The schema: every value a stage computes with is a param of params.yaml, which DVC tracks
    # (tests/test_config.py checks that params.yaml spells every key, so no schema default is
    # ever used by the default pipeline).
    **{f"pipeline/config/{name}": "validation; the values themselves are DVC params"
       for name in ("__init__.py", "schema.py", "checks.py", "messages.py", "loading.py")},
    "pipeline/__init__.py": "the package marker",
    "pipeline/stages/__init__.py": "the package marker",
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module name an import statement in ``path`` can load (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # `from pipeline import layout` imports the module pipeline.layout.
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def module_file(module: str) -> Path | None:
    """The source file of a ``pipeline`` module (package: its ``__init__.py``), if it exists."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(entry_modules: list[str]) -> set[str]:
    """Repository-relative paths of every ``pipeline`` file the entry modules can load."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = list(entry_modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        files.add(path.relative_to(REPO_ROOT).as_posix())
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += sorted(_imported_modules(path, module))
    return files


def entry_modules(cmd: str) -> list[str]:
    words = shlex.split(cmd)
    modules = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-m"]
    if "pipeline.launch" in modules:
        stage = words[words.index("pipeline.launch") + 1]
        modules.append(f"pipeline.stages.{stage}")
    return modules


def expanded_stages() -> dict[str, dict]:
    """dvc.yaml's stages with ``foreach`` expanded and ``${key}``/``${item}`` substituted."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    result = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            result[name] = stage
            continue
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        for key, item in pairs:
            text = yaml.safe_dump(stage["do"])
            text = text.replace("${key}", str(key))
            if isinstance(item, dict):
                text = re.sub(r"\$\{item\.(\w+)\}", lambda m, item=item: str(item[m.group(1)]), text)
            else:
                text = text.replace("${item}", str(item))
            result[f"{name}@{key}"] = yaml.safe_load(text)
    return result


def missing_deps(stage: dict) -> list[str]:
    deps = [str(d).rstrip("/") for d in stage.get("deps", [])]
    closure = import_closure(entry_modules(stage["cmd"]))
    return sorted(
        path for path in closure - set(EXEMPT)
        if not any(path == dep or path.startswith(dep + "/") for dep in deps)
    )


STAGES = expanded_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_cover_the_import_closure(name: str) -> None:
    missing = missing_deps(STAGES[name])
    assert not missing, (
        f"stage {name} imports {missing} but does not list them (or a folder above them) in its "
        "deps in dvc.yaml: a change there would not re-run it"
    )


def test_every_stage_runs_a_pipeline_module() -> None:
    for name, stage in STAGES.items():
        assert any(m.startswith("pipeline.stages.") for m in entry_modules(stage["cmd"])), name


def test_exemptions_exist() -> None:
    # A stale exemption hides nothing today but would silently exempt a future file of that name.
    assert all((REPO_ROOT / path).is_file() for path in EXEMPT), [p for p in EXEMPT
                                                                   if not (REPO_ROOT / p).is_file()]


def test_the_closure_follows_function_local_imports(tmp_path: Path) -> None:
    # The closure must see an import inside a function body, and skip one under TYPE_CHECKING.
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pipeline.never\n"
        "def f():\n    from pipeline import files\n    import pipeline.errors\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = _imported_modules(path, "pipeline.mod")
    assert {"pipeline.files", "pipeline.errors"} <= found
    assert "pipeline.never" not in found


def test_no_stage_imports_another_stage() -> None:
    stages_dir = REPO_ROOT / PACKAGE / "stages"
    for path in sorted(stages_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        imported = _imported_modules(path, f"pipeline.stages.{path.stem}")
        others = {m for m in imported if m.startswith("pipeline.stages.") and m != "pipeline.stages"}
        assert not others, f"{path.name} imports {sorted(others)}: stages are leaves"


def test_params_yaml_spells_every_key() -> None:
    # Why pipeline/config/ may be exempt above: with every key in params.yaml (which DVC tracks),
    # no schema default ever reaches a stage of the default pipeline.
    from pipeline.config import load_config

    def keys(tree: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in tree.items():
            found |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return found

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    resolved = load_config(REPO_ROOT / "params.yaml").to_dict()
    assert keys(resolved) - keys(raw) == set(), "params.yaml leaves these keys to the schema's defaults"
