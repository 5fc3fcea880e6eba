"""Architecture specs: networks as data (YAML or JSON), mirroring the `ntc.stax` builders.

A layer is a one-key mapping from its name to its arguments, or just its name when it takes
none; `serial` and `parallel` hold lists.  A file may hold the net alone or a document with
`name`, `description`, `input_shape` and `net`::

    name: fc-erf
    input_shape: [-1, 1]
    net:
      serial:
        - Dense: {out_dim: 512, W_std: 1.5, b_std: 0.05}
        - Erf
        - Dense: {out_dim: 1, W_std: 1.5, b_std: 0.05}

Specs are data: files are read with `yaml.safe_load` only (no tag can build an object or run
code), every layer's arguments are validated by the IR's pydantic models (unknown keys are
rejected), and every error names its place, e.g. ``serial[3].Conv.padding: ...``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .errors import ValidationError
from .ir import ops
from .ir.net import Net, layer

STRUCTURAL = ('serial', 'parallel')
#: op kinds a spec may name (internal ops made by passes are not layers)
LAYERS = {kind: cls for kind, cls in ops.OPS.items()
          if kind not in ('Input', 'Affine', 'Transpose') and cls.serializable}


def _err(path: str, msg: str) -> ValidationError:
    return ValidationError(f'{path}: {msg}' if path else msg)


def _read(source) -> Any:
    if isinstance(source, (dict, list, str)) and not _looks_like_path(source):
        return source
    path = Path(source)
    if not path.exists():
        raise _err('', f'spec file {path} does not exist')
    text = path.read_text()
    if path.suffix == '.json':
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise _err('', f'{path}: JSON syntax error at line {e.lineno}: {e.msg}') from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f' at line {mark.line + 1}' if mark else ''
        raise _err('', f'{path}: {e.problem}{where} (specs are data; tags that build Python '
                   'objects are not allowed)') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        raise _err('', f'{path}: YAML syntax error{where}: '
                   f'{getattr(e, "problem", None) or e}') from None


def _looks_like_path(x) -> bool:
    return isinstance(x, (str, os.PathLike)) and (
        isinstance(x, os.PathLike) or x.endswith(('.yaml', '.yml', '.json')) or os.sep in x)


def load_document(source) -> dict:
    """The whole document: {'name', 'description', 'input_shape', 'net': Net}."""
    data = _read(source)
    if isinstance(data, dict) and 'net' in data:
        unknown = set(data) - {'name', 'description', 'input_shape', 'net'}
        if unknown:
            raise _err('', f'unknown top-level key(s) {sorted(unknown)}; expected name, '
                       'description, input_shape, net')
        doc = dict(data)
        doc['net'] = parse(data['net'])
        if 'input_shape' in doc and doc['input_shape'] is not None:
            shape = doc['input_shape']
            if not (isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
                raise _err('input_shape', f'must be a list of integers, got {shape!r}')
        return doc
    return {'net': parse(data)}


def load(source) -> Net:
    """A `Net` from a spec file path (YAML/JSON) or an already-parsed dict."""
    return load_document(source)['net']


def parse(data: Any, path: str = '') -> Net:
    """Build a Net from the plain-data form; `path` prefixes error locations."""
    if isinstance(data, str):
        data = {data: None}
    if not isinstance(data, dict) or len(data) != 1:
        raise _err(path, f'a layer must be a name or a one-key mapping {{Name: args}}, got '
                   f'{data!r}')
    (kind, args), = data.items()
    if kind in STRUCTURAL:
        if not isinstance(args, list):
            raise _err(f'{path}.{kind}' if path else kind, f'must be a list of layers, got '
                       f'{type(args).__name__}')
        base = f'{path}.{kind}' if path else kind
        return Net(kind, children=tuple(parse(c, f'{base}[{i}]') for i, c in enumerate(args)))
    where = f'{path}.{kind}' if path else str(kind)
    cls = LAYERS.get(kind)
    if cls is None:
        raise _err(where, f'unknown layer {kind!r}; known layers: serial, parallel, '
                   + ', '.join(sorted(LAYERS)))
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise _err(where, f'arguments must be a mapping, got {args!r}')
    try:
        return layer(cls(**args))
    except pydantic.ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = '.'.join(str(p) for p in err['loc'])
            msg = err['msg']
            if err['type'] == 'literal_error':
                msg = 'must be one of ' + err['ctx']['expected'].replace("'", '')
            elif err['type'] == 'extra_forbidden':
                msg = 'unknown argument'
            elif err['type'] == 'missing':
                msg = 'missing required argument'
            msgs.append(f'{where}.{loc}: {msg}')
        raise ValidationError('; '.join(msgs)) from None


def dump(net: Net) -> Any:
    """The plain-data form of a Net (exact inverse of `parse`)."""
    if net.kind in STRUCTURAL:
        return {net.kind: [dump(c) for c in net.children]}
    op = net.op
    if not op.serializable:
        raise ValidationError(f'{op.kind} holds Python functions and cannot be written to a '
                              'spec; build it in Python with ntc.stax')
    defaults = {k: f.default for k, f in type(op).model_fields.items()}
    args = {k: v for k, v in op.model_dump(mode='json').items()
            if k != 'op' and (k not in defaults or getattr(op, k) != defaults[k])}
    return {op.kind: args} if args else op.kind


def dumps(net: Net, fmt: str = 'yaml') -> str:
    """Spec text (YAML or JSON) for a Net."""
    data = dump(net)
    if fmt == 'json':
        return json.dumps(data, indent=1)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def json_schema() -> dict:
    """A JSON Schema for spec documents, generated from the IR's op models."""
    layer_refs, defs = [], {}
    for kind, cls in sorted(LAYERS.items()):
        schema = cls.model_json_schema(mode='validation')
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
