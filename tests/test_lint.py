"""The whole tree passes the linter configured in pyproject.toml ([tool.ruff]: pyflakes rules):
no undefined names, unused imports or variables, and is laid out by `ruff format` (2-space indents,
110 columns). ruff comes with the test extras, pinned to one minor version because its layout
changes between minors. After editing, `ruff format zebra_jax kernels_pallas scripts tests configs` puts a file back in shape."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tree_passes_ruff():
  proc = subprocess.run(
    [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


# the Python tree (docs' code blocks are laid out by hand: their aligned comments read better)
_PYTHON_DIRS = ("zebra_jax", "kernels_pallas", "scripts", "tests", "configs")


def test_the_tree_is_ruff_formatted():
  proc = subprocess.run(
    [sys.executable, "-m", "ruff", "format", "--no-cache", "--check", *_PYTHON_DIRS],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, (
    "run `ruff format " + " ".join(_PYTHON_DIRS) + "`; these files differ:\n" + proc.stdout + proc.stderr
  )


PROJECT_PACKAGES = ("zebra_jax", "kernels_pallas", "configs")
_LAZY_DIRS = ("zebra_jax", "kernels_pallas", "scripts")


def _project_import(node) -> bool:
  import ast

  if isinstance(node, ast.Import):
    return any(a.name.split(".")[0] in PROJECT_PACKAGES for a in node.names)
  if isinstance(node, ast.ImportFrom):
    return node.level > 0 or (node.module or "").split(".")[0] in PROJECT_PACKAGES
  return False


def function_level_project_imports(root: str = ROOT):
  """(path, line, has_reason) for every import of a project module inside a function body; has_reason
  is whether a `# lazy: ...` comment on one of its lines or the line above says why it is not at
  module level."""
  import ast

  found = []
  for top in _LAZY_DIRS:
    for dirpath, _, files in os.walk(os.path.join(root, top)):
      for f in sorted(files):
        if not f.endswith(".py"):
          continue
        path = os.path.join(dirpath, f)
        with open(path, encoding="utf-8") as fh:
          source = fh.read()
        lines = source.splitlines()
        for fn in ast.walk(ast.parse(source, path)):
          if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
          for node in ast.walk(fn):
            if _project_import(node):
              near = lines[max(node.lineno - 2, 0) : node.end_lineno]
              reason = any("# lazy:" in line for line in near)
              found.append((os.path.relpath(path, root), node.lineno, reason))
  return sorted(set(found))


def test_project_imports_are_at_module_level_unless_a_comment_says_why():
  """Imports of zebra_jax / kernels_pallas / configs modules belong at module level, where they show
  the dependency graph. One inside a function is allowed only with a `# lazy: <why>` comment on its
  line or the line above (an import cycle, a heavy optional dependency, libtpu's environment)."""
  unexplained = [f"{path}:{line}" for path, line, reason in function_level_project_imports() if not reason]
  assert not unexplained, (
    "function-level project imports without a `# lazy: <why>` comment "
    "(move them to module level or say why they cannot be):\n  " + "\n  ".join(unexplained)
  )


def test_the_architecture_map_names_only_modules_that_exist():
  """docs/architecture.md is the newcomer's path from scripts/distill.py and generate to a kernel:
  every module it names must exist, so a move or rename that forgets the map fails here."""
  import re

  text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
  named = set(
    re.findall(r"\b((?:zebra_jax|kernels_pallas|models|ops|infer|scripts)/[\w/]*\w(?:\.py)?)", text)
  )
  assert len(named) > 20, named
  # "ops/ssd.ssd_scan" names ops/ssd.py's ssd_scan
  missing = [
    p
    for p in sorted(named)
    if not any(
      os.path.exists(os.path.join(ROOT, b, p + ext)) for b in ("", "zebra_jax") for ext in ("", ".py")
    )
  ]
  assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
