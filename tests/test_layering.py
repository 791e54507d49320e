"""The packages form layers: core at the bottom (imports nothing of the project), tasks and methods on it
(neither imports the other), harness on top. An import that points up or sideways fails here."""
import ast
import os

from tests.conftest import ROOT

PACKAGES = ("core", "tasks", "methods", "harness")
ALLOWED = {"core": set(), "tasks": {"core"}, "methods": {"core"}, "harness": {"core", "tasks", "methods"}}


def project_imports(package: str, root: str = ROOT) -> dict[str, set[str]]:
    """module path -> project packages it imports, at module level or inside functions."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            targets = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets.add(node.module.split(".")[0])
            found[os.path.relpath(path, root)] = targets & set(PACKAGES) - {package}
    return found


def test_no_package_imports_one_above_it():
    violations = [f"{module} imports {sorted(targets - ALLOWED[package])}"
                  for package in PACKAGES for module, targets in project_imports(package).items()
                  if targets - ALLOWED[package]]
    assert not violations, "\n".join(violations)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # The check must catch a lazy import too, or it would pass on a tree that has one.
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "bad.py").write_text("def f():\n    from harness import runner\n")
    assert project_imports("core", str(tmp_path)) == {os.path.join("core", "bad.py"): {"harness"}}
