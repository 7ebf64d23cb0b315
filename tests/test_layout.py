"""The layout a reader relies on: one concept per file, each file readable knowing only the files
it imports, which never import it back, and none (tests included) over 500 lines.

Run: python -m pytest -q tests/test_layout.py
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))
# the foundations: what they do needs nothing else of ours
LEAVES = {"tasks", "model", "loss", "curves"}


def our_imports(name):
    """The project modules that `name`.py imports, at any depth of its code."""
    tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_imports_flow_one_way():
    graph = {name: our_imports(name) for name in MODULES}
    assert LEAVES <= set(MODULES)
    assert {name: graph[name] for name in LEAVES} == {name: set() for name in LEAVES}
    order = []  # a topological order exists only if there is no cycle
    while len(order) < len(graph):
        ready = sorted(n for n in graph if n not in order and graph[n] <= set(order))
        assert ready, f"an import cycle among {sorted(set(graph) - set(order))}"
        order += ready
    assert not [name for name, deps in graph.items() if "train" in deps]  # the entry point


def test_every_file_opens_with_a_docstring_and_stays_short():
    tests = sorted(os.path.join("tests", f) for f in os.listdir(os.path.join(ROOT, "tests"))
                   if f.endswith(".py"))
    for name in [f"{m}.py" for m in MODULES] + tests:
        text = open(os.path.join(ROOT, name)).read()
        assert ast.get_docstring(ast.parse(text)), f"{name} has no docstring"
        assert text.count("\n") <= 500, f"{name} has {text.count(chr(10))} lines"
