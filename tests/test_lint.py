"""The whole tree passes the linter configured in pyproject.toml ([tool.ruff]: pyflakes rules):
no undefined names, unused imports or variables. ruff comes with the test extras."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tree_passes_ruff():
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format",
                         "concise", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
