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


# the library, its kernels, the configs and the scripts (what the import rules below apply to)
_IMPORT_DIRS = ("zebra_jax", "kernels_pallas", "configs", "scripts")


def _module_name(relpath: str) -> str:
  """zebra_jax/convert/gguf.py -> zebra_jax.convert.gguf; a package's __init__.py -> the package."""
  parts = relpath[: -len(".py")].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: str = ROOT) -> bool:
  path = os.path.join(root, *name.split("."))
  return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def _project_files(root: str = ROOT):
  """(module name, is a package's __init__, parsed AST) of every .py file under _IMPORT_DIRS."""
  import ast

  for top in _IMPORT_DIRS:
    for dirpath, _, files in os.walk(os.path.join(root, top)):
      for f in sorted(files):
        if f.endswith(".py"):
          path = os.path.join(dirpath, f)
          with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
          yield _module_name(os.path.relpath(path, root)), f == "__init__.py", tree


def _imported_module(node, module: str, is_package: bool) -> str:
  """The absolute module name an `ImportFrom` reads from (relative imports resolved)."""
  if not node.level:
    return node.module or ""
  base = module.split(".") if is_package else module.split(".")[:-1]
  base = base[: len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def private_imports(root: str = ROOT) -> list[str]:
  """`path:line: from M import _name` for every import of a leading-underscore name that is not a
  module (a private module such as zebra_jax._io may be imported; an alias such as
  `import cudnn as _cudnn` is the importer's own name), and `path:line: M._name` for every
  attribute `_name` read from an imported project module; dunder names are public."""
  import ast

  found = []
  for module, is_package, tree in _project_files(root):
    bound = {}  # local name -> the project module it is bound to
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.split(".")[0] in PROJECT_PACKAGES:
            bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
      elif isinstance(node, ast.ImportFrom):
        source = _imported_module(node, module, is_package)
        if source.split(".")[0] not in PROJECT_PACKAGES:
          continue
        for a in node.names:
          if _is_module(f"{source}.{a.name}", root):
            bound[a.asname or a.name] = f"{source}.{a.name}"
          elif a.name.startswith("_") and not a.name.startswith("__"):
            found.append(f"{module.replace('.', '/')}:{node.lineno}: from {source} import {a.name}")

    def module_of(expr):
      if isinstance(expr, ast.Name):
        return bound.get(expr.id)
      if isinstance(expr, ast.Attribute):
        parent = module_of(expr.value)
        if parent and _is_module(f"{parent}.{expr.attr}", root):
          return f"{parent}.{expr.attr}"
      return None

    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
        owner = module_of(node.value)
        if owner and owner != module and not _is_module(f"{owner}.{node.attr}", root):
          found.append(f"{module.replace('.', '/')}:{node.lineno}: {owner}.{node.attr}")
  return sorted(set(found))


def test_no_private_name_is_imported_across_modules():
  """A leading-underscore name is its module's own: no other module of zebra_jax, kernels_pallas,
  configs or scripts imports it (`from M import _name`) or reads it (`M._name`); a name another
  module needs gets a public name (and a docstring) in its home module. Private modules
  (zebra_jax/_io.py, _paths.py, configs/_teachers.py) may be imported; they are internal to the
  project, not to one module. tests/ is not checked: a test may import a private name to test it."""
  found = private_imports()
  assert not found, "private names used outside their module:\n  " + "\n  ".join(found)


def module_import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """{module: the project modules its module-level imports run}, from the AST (imports inside a
  function run when it is called; those in a class body or a try block at module level count).
  `import a.b.c`, `from a.b.c import x` and `from a.b import c` (c a submodule) import a.b.c and,
  before it, the packages above it (a's and a.b's __init__), except the importer's own packages,
  whose __init__ has already started when the importer runs; a name taken from one of those that is
  not a submodule (`from zebra_jax.convert import CheckpointError` in zebra_jax.convert.gguf) reads
  that __init__, so it counts."""
  import ast

  graph = {}
  for module, is_package, tree in _project_files(root):
    parts = module.split(".")
    own_packages = {".".join(parts[:i]) for i in range(1, len(parts))}
    deps = set()

    def add(target: str, reads_target: bool = True):
      names = target.split(".")
      for i in range(1, len(names) + 1):
        m = ".".join(names[:i])
        last = i == len(names)
        if m == module or (m in own_packages and not (reads_target and last)):
          continue
        if _is_module(m, root):
          deps.add(m)

    def visit(node):
      for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
          continue
        if isinstance(child, ast.Import):
          for a in child.names:
            if a.name.split(".")[0] in PROJECT_PACKAGES:
              add(a.name)
        elif isinstance(child, ast.ImportFrom):
          source = _imported_module(child, module, is_package)
          if source.split(".")[0] in PROJECT_PACKAGES:
            subs = [a.name for a in child.names if _is_module(f"{source}.{a.name}", root)]
            for s in subs:
              add(f"{source}.{s}")
            add(source, reads_target=len(subs) < len(child.names))
        visit(child)

    visit(tree)
    graph[module] = deps
  return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle [a, b, ..., a] through each strongly connected component of more than one module."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def connect(v):  # Tarjan's algorithm (the graph has a few hundred nodes: recursion is fine)
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        components.append(comp)

  for v in sorted(graph):
    if v not in index:
      connect(v)
  cycles = []
  for comp in components:
    start = min(comp)
    prev, queue = {start: None}, [start]  # shortest way back to start inside the component
    while queue:
      v = queue.pop(0)
      nxt = sorted(w for w in graph[v] if w in comp)
      if start in nxt:
        path = [v]
        while prev[path[-1]] is not None:
          path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
        break
      for w in nxt:
        if w not in prev:
          prev[w] = v
          queue.append(w)
  return cycles


def test_module_level_imports_have_no_cycle():
  """The module-level imports between project modules form no cycle, so every module can be
  imported first and none sees another half-initialised. Importing a submodule runs its packages'
  __init__ first, so `zebra_jax.convert.gguf` importing a name of `zebra_jax.convert` whose
  __init__ imports `.gguf` is a cycle (module_import_graph says what counts). An import kept inside
  a function to avoid a cycle says which in its `# lazy:` comment."""
  graph = module_import_graph()
  assert len(graph) > 100 and "zebra_jax.convert.gguf" in graph["zebra_jax.convert"], len(graph)
  cycles = import_cycles(graph)
  assert not cycles, "import cycles between project modules:\n  " + "\n  ".join(
    " -> ".join(c) for c in cycles
  )


def test_the_cycle_finder_sees_a_cycle_through_a_package_init(tmp_path):
  """The rule the cycle test relies on: a submodule importing a name from its own package's
  __init__, which imports the submodule, is a cycle; importing a sibling submodule is not."""
  pkg = tmp_path / "zebra_jax" / "convert"
  pkg.mkdir(parents=True)
  (tmp_path / "zebra_jax" / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text("from zebra_jax.convert.gguf import load\nclass Error(Exception): ...\n")
  (pkg / "names.py").write_text("")
  (pkg / "gguf.py").write_text("from zebra_jax.convert import names\nfrom zebra_jax.convert import Error\n")
  graph = module_import_graph(str(tmp_path))
  assert import_cycles(graph) == [["zebra_jax.convert", "zebra_jax.convert.gguf", "zebra_jax.convert"]]
  (pkg / "gguf.py").write_text(
    "from zebra_jax.convert import names\n\ndef f():\n  from zebra_jax.convert import Error\n"
  )
  assert import_cycles(module_import_graph(str(tmp_path))) == []
