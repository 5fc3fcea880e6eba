"""The package's layering, checked from the source: each module imports only modules of its own
layer or of layers below it (the order the README's architecture section states), and every
import of an ntc module sits at the top of its module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'ntc'

#: bottom to top; a module belongs to the layer naming its top-level file or package
LAYERS = (
    ('errors', 'checks'),              # errors and value checks: no ntc imports but errors
    ('ir',),                           # types, the Op base and its traits, registry, graph
    ('covariance',),                   # the Kernel record, array back ends, stencils, masks
    ('layers',),                       # one module per layer family: models and rules
    ('passes',),                       # pure Graph -> Graph passes
    ('lower',),                        # kernel program, finite network, symbolic kernels
    ('fingerprint', 'plan', 'api'),    # KernelPlan and compile
    ('net', 'stax', 'spec', 'frontends'),  # the front ends: builders, specs, traced models
    ('runtime',),                      # tiling, store, predict, empirical, Monte-Carlo
    ('testing', 'bench'),              # tools built on the whole library
    ('demo', 'cli', '__main__', '__init__'),
)
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer_of(module: str) -> str:
    """`ntc.layers.conv` -> 'layers'; the package itself -> '__init__'."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The ntc modules an import statement names (relative imports resolved)."""
    if node.level:
        base = module.split('.')
        base = base if is_package else base[:-1]
        base = base[:len(base) - node.level + 1]
        target = '.'.join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ''
    if not target.startswith('ntc'):
        return []
    if node.module is None:  # `from . import a, b`: each name is a module
        return [f'{target}.{a.name}' for a in node.names]
    return [target]


def imports(path: Path):
    """(line, imported ntc module, at module top level) for every import in `path`."""
    module = module_name(path)
    tree = ast.parse(path.read_text())
    type_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, 'id', None) == 'TYPE_CHECKING':
            type_only.update(id(n) for n in ast.walk(node))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            names = resolve(node, module, path.name == '__init__.py')
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split('.')[0] == 'ntc']
        else:
            continue
        for name in names:
            yield node.lineno, name, id(node) in top


SOURCES = sorted(PACKAGE.rglob('*.py'))


def test_every_module_has_a_layer():
    missing = {layer_of(module_name(p)) for p in SOURCES} - set(LEVEL)
    assert not missing, f'add these to LAYERS: {sorted(missing)}'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_and_sit_at_the_top(path):
    own = layer_of(module_name(path))
    problems = []
    for line, name, at_top in imports(path):
        other = layer_of(name)
        if name == 'ntc' and own in LAYERS[-1]:
            continue
        if LEVEL[other] > LEVEL[own]:
            problems.append(f'line {line}: {own} imports {name}, a layer above it')
        if not at_top:
            problems.append(f'line {line}: import of {name} inside a function or block')
    assert not problems, '\n'.join(problems)


def test_the_ir_reads_without_jax():
    for path in (PACKAGE / 'ir').glob('*.py'):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split('.')[0] == 'jax' for a in node.names), path
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert (node.module or '').split('.')[0] != 'jax', path


def test_the_checker_sees_an_upward_import():
    """The layering test can fail: an IR module importing a pass resolves to the passes layer,
    which sits above the IR."""
    node = ast.parse('from ..passes import check').body[0]
    (name,) = resolve(node, 'ntc.ir.op', is_package=False)
    assert name == 'ntc.passes' and LEVEL[layer_of(name)] > LEVEL['ir']
    node = ast.parse('from . import layers, spec').body[0]
    assert resolve(node, 'ntc', is_package=True) == ['ntc.layers', 'ntc.spec']
