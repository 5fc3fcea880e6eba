"""Architecture specs: networks as data (YAML or JSON), mirroring the `ntc.stax` builders.

A layer is a one-key mapping from its name to its arguments, or just its name when it takes
none; `serial` and `parallel` hold lists; `repeat` holds `{layer: <layer>, n: <count>}`
(the older form `{Repeat: {layer: .., n: ..}}` is read too).  A file may hold the net alone
or a document with `name`, `description`, `input_shape` and `net`::

    name: fc-erf
    input_shape: [-1, 1]
    net:
      serial:
        - Dense: {out_dim: 512, W_std: 1.5, b_std: 0.05}
        - Erf
        - Dense: {out_dim: 1, W_std: 1.5, b_std: 0.05}

Specs are data: files are read with yaml's safe loader only (no tag can build an object or run
code), every layer's arguments are validated by the IR's pydantic models (unknown keys are
rejected), and every error names its place, e.g. ``serial[3].Conv.padding: ...``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path
from typing import Any

import pydantic
import pydantic.json_schema
import pydantic_core
import yaml

from .errors import ValidationError
from .ir.registry import OPS
from .net import Net, layer, repeated

STRUCTURAL = ('serial', 'parallel')
#: `repeat` holds one layer and a count, not a list; `Repeat` is its form before issue 14
REPEAT_FORMS = ('repeat', 'Repeat')


def spec_layers() -> dict:
    """The op kinds a spec may name, by kind: every registered layer whose `in_specs` trait is
    set (not the ops passes make, nor layers holding Python functions)."""
    return {kind: cls for kind, cls in OPS.items() if cls.in_specs}


def _err(path: str, msg: str) -> ValidationError:
    return ValidationError(f'{path}: {msg}' if path else msg)


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters so that an error stays on one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _loc(parts) -> str:
    """A pydantic error location as a spec path: ('filter_shape', 1) -> 'filter_shape[1]'."""
    out = ''
    for p in parts:
        out += f'[{p}]' if isinstance(p, int) else (f'.{p}' if out else str(p))
    return out


def _accepts_bool(annotation) -> bool:
    return 'bool' in str(annotation)


#: bounds on a spec: the most nodes (mappings, lists and scalars, an alias counted at every
#: place it is used), the deepest nesting and the largest file.  Far above any real network,
#: far below what would exhaust memory, time or Python's stack.
MAX_NODES = 100_000
MAX_DEPTH = 200
MAX_BYTES = 10 * 2 ** 20


class _TooBig(Exception):
    """A spec beyond MAX_NODES or MAX_DEPTH (turned into a ValidationError naming the file)."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing nesting beyond MAX_DEPTH while it composes (its composer
    recurses once per level)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f'the spec nests more than {MAX_DEPTH} levels deep')
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_load(text: str):
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_size(data) -> None:
    """Raise `_TooBig` when `data` (plain lists, dicts and scalars, possibly sharing parts, as
    YAML aliases make them) expands to more than MAX_NODES nodes, nests deeper than MAX_DEPTH or
    contains itself.  Iterative, and linear in the number of distinct containers."""
    done: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    open_: set[int] = set()
    stack = [(data, False)]
    while stack:
        obj, finished = stack.pop()
        key = id(obj)
        if key in done:
            continue
        children = list(obj.values()) if isinstance(obj, dict) else obj
        if not finished:
            if key in open_:
                raise _TooBig('the spec contains itself (a recursive alias)')
            open_.add(key)
            stack.append((obj, True))
            stack.extend((c, False) for c in children if isinstance(c, (list, dict)))
            continue
        open_.discard(key)
        size, height = 1 + (len(obj) if isinstance(obj, dict) else 0), 0
        for c in children:
            s, h = done[id(c)] if isinstance(c, (list, dict)) else (1, 0)
            size, height = size + s, max(height, h)
        done[key] = (size, height + 1)
        if size > MAX_NODES:
            raise _TooBig(f'the spec expands to more than {MAX_NODES} nodes (aliases count at '
                          'every place they are used)')
        if height + 1 > MAX_DEPTH:
            raise _TooBig(f'the spec nests more than {MAX_DEPTH} levels deep')


def _read(source) -> Any:
    if isinstance(source, (dict, list, str)) and not _looks_like_path(source):
        return source
    path = Path(source)
    if not path.exists():
        raise _err('', f'spec file {path} does not exist')
    if not path.is_file():
        raise _err('', f'spec file {path} is not a regular file (a directory or device?)')
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _err('', f'cannot read the spec file {path}: {e.strerror or e}') from None
    if len(raw) > MAX_BYTES:
        raise _err('', f'{path}: the spec file has {len(raw)} bytes; specs are at most '
                   f'{MAX_BYTES} bytes')
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b'\n') + 1
        raise _err('', f'{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}, '
                   f'offset {e.start})', ) from None
    if not text.strip():
        raise _err('', f'{path}: the spec file is empty (expected a layer or a document with '
                   'a `net` key)')
    try:
        return _parse_text(text, 'json' if path.suffix == '.json' else 'yaml')
    except ValidationError as e:
        raise _err('', f'{path}: {e}') from None


def _parse_text(text: str, fmt: str) -> Any:
    """Plain data from spec text, its nesting bounded while it is read (its expanded size is
    bounded by `_document`, which every caller passes it to)."""
    try:
        return json.loads(text) if fmt == 'json' else _yaml_load(text)
    except _TooBig as e:
        raise _err('', str(e)) from None
    except RecursionError:
        raise _err('', f'the spec nests more than {MAX_DEPTH} levels deep') from None
    except json.JSONDecodeError as e:
        raise _err('', f'JSON syntax error at line {e.lineno}: {e.msg}') from None
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f' at line {mark.line + 1}' if mark else ''
        raise _err('', f'{e.problem}{where} (specs are data; tags that build Python '
                   'objects are not allowed)') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        raise _err('', f'YAML syntax error{where}: '
                   f'{getattr(e, "problem", None) or e}') from None


def _looks_like_path(x) -> bool:
    return isinstance(x, (str, os.PathLike)) and (
        isinstance(x, os.PathLike) or x.endswith(('.yaml', '.yml', '.json')) or os.sep in x)


DOCUMENT_KEYS = ('name', 'description', 'input_shape', 'net')


def load_document(source) -> dict:
    """The whole document as a dict: 'net' (a `Net`) and, when the spec gives them, 'name',
    'description' and 'input_shape' (a list of ints, -1 for the batch axis).  A spec that is a
    bare layer gives {'net': Net}.  Errors from a file are prefixed with the file's name."""
    data = _read(source)
    try:
        return _document(data)
    except ValidationError as e:
        if _looks_like_path(source):
            raise ValidationError(f'{os.fspath(source)}: {e}') from None
        raise


def _bounded(data) -> None:
    try:
        check_size(data)
    except _TooBig as e:
        raise _err('', str(e)) from None


def _document(data) -> dict:
    _bounded(data)
    if not (isinstance(data, dict) and any(k in DOCUMENT_KEYS for k in data)):
        return {'net': parse(data)}
    unknown = sorted(set(data) - set(DOCUMENT_KEYS))
    if unknown:
        raise _err('', f'unknown top-level key(s) {", ".join(map(str, unknown))}; a spec '
                   'document has the keys name, description, input_shape and net')
    if 'net' not in data:
        raise _err('', 'missing required key net (the network: a layer or serial/parallel '
                   'list)')
    doc = {'net': parse(data['net'], 'net')}
    for key in ('name', 'description'):
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                raise _err(key, f'must be a string, got {_short(data[key])}')
            doc[key] = data[key]
    shape = data.get('input_shape')
    if shape is not None:
        if not (isinstance(shape, list) and shape and all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise _err('input_shape', f'must be a list of integers such as [-1, 32, 32, 3], '
                       f'got {_short(shape)}')
        if any(d == 0 or d < -1 for d in shape):
            raise _err('input_shape', f'sizes must be positive (-1 for the batch axis), got '
                       f'{_short(shape)}')
        doc['input_shape'] = shape
    return doc


def load(source) -> Net:
    """A `Net` from a spec file path (YAML/JSON) or an already-parsed dict."""
    return load_document(source)['net']


def parse(data: Any, path: str = '') -> Net:
    """Build a Net from the plain-data form (a layer name, a one-key mapping {Name: args}, or
    {serial|parallel: [layers]}); `path` prefixes error locations.  Arguments are validated by
    the op's pydantic model: unknown keys, wrong types and bad values raise a one-line
    `ValidationError` naming the place, e.g. ``serial[3].Conv.padding: must be one of ...``."""
    if not path:
        _bounded(data)
    if isinstance(data, str):
        data = {data: None}
    if not isinstance(data, dict) or len(data) != 1:
        what = (f'a mapping with {len(data)} keys {", ".join(map(str, data))}'
                if isinstance(data, dict) else _short(data))
        raise _err(path, f'a layer must be a name or a one-key mapping {{Name: args}}, got '
                   f'{what}')
    (kind, args), = data.items()
    if kind in STRUCTURAL:
        base = f'{path}.{kind}' if path else kind
        if not isinstance(args, list):
            raise _err(base, f'must be a list of layers, got {type(args).__name__}')
        return Net(kind, children=tuple(parse(c, f'{base}[{i}]') for i, c in enumerate(args)))
    where = f'{path}.{kind}' if path else str(kind)
    if kind in REPEAT_FORMS:
        return _parse_repeat(args, where)
    layers = spec_layers()
    cls = layers.get(kind)
    if cls is None:
        close = difflib.get_close_matches(str(kind), list(layers) + list(STRUCTURAL)
                                          + ['repeat'], n=1)
        guess = f'did you mean {close[0]}? ' if close else ''
        raise _err(where, f'unknown layer {kind!r}; {guess}known layers: serial, parallel, '
                   'repeat, ' + ', '.join(sorted(layers)))
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise _err(where, f'arguments must be a mapping {{argument: value}}, got {_short(args)}')
    for name, value in args.items():
        field = cls.model_fields.get(name)
        if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
            raise _err(f'{where}.{name}', f'expected a number, got {str(value).lower()}')
    try:
        op = cls(**args)
    except pydantic.ValidationError as e:
        msgs, seen = [], set()
        for err in e.errors():
            loc = _loc(p for p in err['loc'] if not _is_union_tag(p))
            if loc in seen:  # one message per field (unions report each member)
                continue
            seen.add(loc)
            msg = err['msg'].removeprefix('Value error, ')
            if err['type'] == 'literal_error':
                msg = 'must be one of ' + err['ctx']['expected'].replace("'", '')
            elif err['type'] == 'extra_forbidden':
                known = ', '.join(k for k in cls.model_fields if k != 'op')
                msg = f'unknown argument (the arguments of {kind} are {known})'
            elif err['type'] == 'missing':
                msg = 'missing required argument'
            if err['type'] not in ('missing', 'extra_forbidden') and 'input' in err:
                msg = f'{msg} (got {_short(err["input"], 40)})'
            msgs.append(f'{where}.{loc}: {msg}' if loc else f'{where}: {msg}')
        raise ValidationError('; '.join(msgs)) from None
    for name, value in args.items():
        if _has_non_finite(getattr(op, name, None)):
            raise _err(f'{where}.{name}', f'must be finite, got {_short(value)} (numbers beyond '
                       '1.8e308, .inf and .nan read as infinite or NaN)')
    return layer(op)


def _parse_repeat(args: Any, where: str) -> Net:
    """`{layer: <layer>, n: <count>}`: the layer applied n times (`stax.repeat`)."""
    if not (isinstance(args, dict) and set(args) == {'layer', 'n'}):
        raise _err(where, f'must be a mapping {{layer: <layer>, n: <count>}}, got {_short(args)}')
    return repeated(parse(args['layer'], f'{where}.layer'), args['n'], where)


def _has_non_finite(value) -> bool:
    """True when `value`, or a number in a tuple or list of it, is infinite or NaN."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, tuple)) and any(_has_non_finite(v) for v in value)


def _is_union_tag(part) -> bool:
    """pydantic names the member of a union in the location (e.g. 'int', 'tuple[int, ...]')."""
    return isinstance(part, str) and (part in ('int', 'float', 'str', 'bool', 'none')
                                      or '[' in part or part.startswith(('function-', 'lax-')))


def dump(net: Net) -> Any:
    """The plain-data form of a Net (exact inverse of `parse`)."""
    if net.kind in STRUCTURAL:
        return {net.kind: [dump(c) for c in net.children]}
    if net.kind == 'repeat':
        return {'repeat': {'layer': dump(net.children[0]), 'n': net.n}}
    op = net.op
    if not op.serializable():
        raise ValidationError(f'{op.kind} holds Python functions and cannot be written to a '
                              'spec; build it in Python with ntc.stax')
    defaults = {k: f.default for k, f in type(op).model_fields.items()}
    args = {k: v for k, v in op.model_dump(mode='json').items()
            if k != 'op' and (k not in defaults or getattr(op, k) != defaults[k])}
    return {op.kind: args} if args else op.kind


def dumps(net: Net, fmt: str = 'yaml') -> str:
    """Spec text (YAML or JSON) for a Net; `loads` reads it back exactly."""
    return _text(dump(net), fmt)


def loads(text: str, fmt: str = 'yaml') -> Net:
    """A Net from spec text (YAML, or JSON, which is YAML too), read with yaml's safe loader."""
    return _document(_parse_text(text, fmt))['net']


def dump_document(net: Net, name: str | None = None, description: str | None = None,
                  input_shape=None) -> dict:
    """A spec document {name, description, input_shape, net} (keys that are None left out)."""
    doc = {'name': name, 'description': description,
           'input_shape': None if input_shape is None else [int(d) for d in input_shape],
           'net': dump(net)}
    return {k: v for k, v in doc.items() if v is not None}


def save(net: Net, path, name: str | None = None, description: str | None = None,
         input_shape=None) -> Path:
    """Write a spec document to `path` (JSON for a .json suffix, YAML otherwise)."""
    path = Path(path)
    doc = dump_document(net, name, description, input_shape)
    path.write_text(_text(doc, 'json' if path.suffix == '.json' else 'yaml'))
    return path


def _text(data, fmt: str) -> str:
    if fmt == 'json':
        return json.dumps(data, indent=1) + '\n'
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


class _SchemaGen(pydantic.json_schema.GenerateJsonSchema):
    """Leaves out what a spec cannot hold (Python callables): such fields stay at None."""

    def handle_invalid_for_json_schema(self, schema, error_info):
        raise pydantic_core.PydanticOmit


def json_schema() -> dict:
    """A JSON Schema for spec documents, generated from the IR's op models."""
    layer_refs, defs = [], {}
    for kind, cls in sorted(spec_layers().items()):
        schema = cls.model_json_schema(mode='validation', schema_generator=_SchemaGen)
        schema.get('properties', {}).pop('op', None)
        if 'required' in schema:
            schema['required'] = [r for r in schema['required'] if r != 'op']
        for name, sub in schema.pop('$defs', {}).items():
            defs[name] = sub
        schema['additionalProperties'] = False
        defs[kind] = schema
        no_args = not schema.get('required')
        one = {'type': 'object', 'properties': {kind: {'anyOf': [{'$ref': f'#/$defs/{kind}'},
                                                                {'type': 'null'}]}},
               'required': [kind], 'additionalProperties': False}
        layer_refs.append(one)
        if no_args:
            layer_refs.append({'const': kind})
    for kind in STRUCTURAL:
        layer_refs.append({'type': 'object', 'required': [kind], 'additionalProperties': False,
                           'properties': {kind: {'type': 'array',
                                                 'items': {'$ref': '#/$defs/layer'}}}})
    layer_refs.append({'type': 'object', 'required': ['repeat'], 'additionalProperties': False,
                       'properties': {'repeat': {
                           'type': 'object', 'required': ['layer', 'n'],
                           'additionalProperties': False,
                           'properties': {'layer': {'$ref': '#/$defs/layer'},
                                          'n': {'type': 'integer', 'minimum': 0}}}}})
    defs['layer'] = {'anyOf': layer_refs}
    return {
        '$schema': 'https://json-schema.org/draft/2020-12/schema',
        'title': 'ntc architecture spec',
        'anyOf': [{'$ref': '#/$defs/layer'},
                  {'type': 'object', 'required': ['net'], 'additionalProperties': False,
                   'properties': {'name': {'type': 'string'}, 'description': {'type': 'string'},
                                  'input_shape': {'type': 'array', 'items': {'type': 'integer'}},
                                  'net': {'$ref': '#/$defs/layer'}}}],
        '$defs': defs,
    }
