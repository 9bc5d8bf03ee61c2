"""The project's modules import each other at their tops only, and never in a circle:
dependencies point one way (commands -> protocol and Caffe primitives -> the Caffe guard
-> the Caffe-free registry, metrics and files). Read from the sources (ast), nothing
imported."""
import ast
import os

from project import REPO

SKIP = {'.git', '.venv', 'tests', '__pycache__'}


def sources():
    """{path relative to REPO: parsed module} of every .py file of the repository outside
    tests/ (the modules, tools/, data/ scripts, model folders' solve.py)."""
    found = {}
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith('.'))
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                with open(path) as f:
                    found[os.path.relpath(path, REPO)] = ast.parse(f.read(), path)
    return found


def project_modules():
    """Names a project file can import: the repository's top-level modules and tools/'s."""
    names = set()
    for folder in (REPO, os.path.join(REPO, 'tools')):
        names |= {f[:-3] for f in os.listdir(folder) if f.endswith('.py')}
    return names


def imports(tree, names):
    """(module imported, line, at the top?) of every import of a project module in `tree`."""
    found = []

    def walk(node, nested):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                mods = [a.name.split('.')[0] for a in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level:
                mods = [child.module.split('.')[0]]
            else:
                mods = []
            found.extend((m, child.lineno, not nested) for m in mods if m in names)
            walk(child, nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.ClassDef, ast.Lambda)))
    walk(tree, False)
    return found


def graph():
    """{module: set of project modules it imports at its top} of the top-level modules
    and tools/."""
    names = project_modules()
    edges = {}
    for path, tree in sources().items():
        folder, name = os.path.split(path)
        if folder in ('', 'tools'):
            edges[name[:-3]] = {m for m, _, top in imports(tree, names) if top}
    return edges


def cycle(edges):
    """One import cycle as a list of modules [a, b, ..., a], or None (depth-first)."""
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 'done'
        return None
    for node in sorted(edges):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_function_local_imports_of_project_modules():
    names = project_modules()
    local = ['%s:%d imports %s inside a function or class' % (path, line, m)
             for path, tree in sorted(sources().items())
             for m, line, top in imports(tree, names) if not top]
    assert not local, '\n'.join(local)


def test_no_import_cycles():
    found = cycle(graph())
    assert found is None, 'import cycle: %s' % ' -> '.join(found)


def test_the_check_finds_a_cycle_and_a_local_import():
    assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert cycle({'a': {'b'}, 'b': set()}) is None
    tree = ast.parse('import a\n\ndef f():\n    import b\n    from c import x\n')
    assert imports(tree, {'a', 'b', 'c'}) == [('a', 1, True), ('b', 4, False), ('c', 5, False)]


def test_the_caffe_free_base_imports_nothing_above_it():
    """The registry, the metrics and the file and command helpers never reach Caffe's
    guard or anything above it (they run without pycaffe)."""
    edges = graph()
    base = {'project', 'safewrite', 'cli', 'models', 'metrics', 'jsonfile'}
    for name in base:
        assert edges[name] <= base, (name, edges[name] - base)
