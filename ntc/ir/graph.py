"""The IR graph: a DAG of op applications, held in a `networkx.DiGraph` behind a small API.

Nodes are immutable `Node` records (op, path, inferred types, layout decisions); edges carry
the input slot, since fan-in order matters.  Code outside ntc/ir uses this class only, never
networkx directly.  Passes are pure: they copy the graph, edit the copy, and return it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import networkx as nx
from pydantic import BaseModel, ConfigDict

from ..errors import NtcError, ValidationError
from .op import Op
from .registry import op_from_dict
from .types import CovType, TensorType


class Node(BaseModel):
    """One op application.  `ttype` and `cov` are filled by passes; `materialize` (set by
    `choose_layouts`) asks lowering to store this node's covariance before its consumers read
    it, instead of letting XLA fuse (and possibly recompute) it into them; `loop` (set by
    `roll_loops`) is (loop id, iteration) for a node that runs as part of a rolled loop."""

    model_config = ConfigDict(frozen=True, extra='forbid')

    id: int
    op: Op
    path: str
    ttype: TensorType | None = None
    cov: CovType | None = None
    materialize: bool = False
    loop: tuple[int, int] | None = None

    def text(self) -> str:
        return self.op.label()


@dataclass(frozen=True)
class RepeatRecord:
    """A `repeat(layer, n)` as declared, expanded by `build_graph`: the node ids of the values
    entering it and of those leaving each iteration (for `infer_types`' shape check).  Not
    written by `to_dict`: a dumped graph is already typed."""

    path: str
    n: int
    entry: tuple[int, ...]
    exits: tuple[tuple[int, ...], ...]


class Graph:
    """A DAG of `Node`s with its designated outputs (in order; a network with several outputs,
    NT's `parallel` at the top, has several), and the repeats it was expanded from.  The inputs
    are the nodes without inputs, in id order (`input_nodes`)."""

    def __init__(self) -> None:
        self._g = nx.DiGraph()
        self._next = 0
        self.outputs: list[int] = []
        self.repeats: list[RepeatRecord] = []
        self._order: list[int] | None = None  # cached topological order; edits clear it

    # -- building --------------------------------------------------------------------------

    def add(self, op: Op, inputs: list[int], path: str) -> int:
        """Append a node applying `op` to `inputs` (in slot order); returns its id."""
        self._order = None
        nid = self._next
        self._next += 1
        self._g.add_node(nid, node=Node(id=nid, op=op, path=path))
        for slot, src in enumerate(inputs):
            self._g.add_edge(src, nid, slot=slot)
        return nid

    def copy(self) -> Graph:
        g = Graph()
        g._g = self._g.copy()
        g._next = self._next
        g.outputs = list(self.outputs)
        g.repeats = list(self.repeats)
        g._order = self._order
        return g

    # -- queries ---------------------------------------------------------------------------

    @property
    def output(self) -> int | None:
        """The output node of a single-output graph (None before one is set)."""
        if len(self.outputs) > 1:
            raise NtcError(f'the graph has {len(self.outputs)} outputs: read Graph.outputs')
        return self.outputs[0] if self.outputs else None

    @output.setter
    def output(self, nid: int) -> None:
        self.outputs = [nid]

    def node(self, nid: int) -> Node:
        return self._g.nodes[nid]['node']

    def __contains__(self, nid: int) -> bool:
        return nid in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def order(self) -> list[int]:
        """Node ids in a deterministic topological order (ties broken by id)."""
        if self._order is None:
            self._order = list(nx.lexicographical_topological_sort(self._g))
        return list(self._order)

    def nodes(self) -> Iterator[Node]:
        """Nodes in topological order."""
        for nid in self.order():
            yield self.node(nid)

    def inputs(self, nid: int) -> list[int]:
        """Producers of `nid`'s inputs, in slot order."""
        preds = [(self._g.edges[p, nid]['slot'], p) for p in self._g.predecessors(nid)]
        return [p for _, p in sorted(preds)]

    def consumers(self, nid: int) -> list[tuple[int, int]]:
        """(consumer id, slot) pairs reading `nid`'s value, sorted."""
        return sorted((c, self._g.edges[nid, c]['slot']) for c in self._g.successors(nid))

    def input_nodes(self) -> list[int]:
        """The input nodes, in id order: the order of the network's inputs."""
        return sorted(nid for nid in self._g.nodes if self.node(nid).op.arity == 0)

    def is_acyclic(self) -> bool:
        return nx.is_directed_acyclic_graph(self._g)

    def ancestors(self, nid: int) -> set[int]:
        return nx.ancestors(self._g, nid)

    def batch_sizes(self, sizes: dict[int, int]) -> dict[int, int]:
        """Every node's batch size, given the input nodes' (`sizes`, by node id), through each
        layer's `Op.batch_size`; a typed value whose batch entry is a number has that size."""
        out: dict[int, int] = {}
        for node in self.nodes():
            t = node.ttype
            if node.op.arity == 0:
                out[node.id] = sizes[node.id]
            elif t is not None and t.shape[t.batch] is not None:
                out[node.id] = int(t.shape[t.batch])
            else:
                srcs = self.inputs(node.id)
                out[node.id] = node.op.batch_size([self.node(i).ttype for i in srcs],
                                                  [out[i] for i in srcs])
        return out

    def moving_examples(self) -> Node | None:
        """The first node (typed graphs) whose output examples are not those of its input
        (`Op.moves_examples`), or None when every value keeps the input's examples in order."""
        for node in self.nodes():
            ins = [self.node(i).ttype for i in self.inputs(node.id)]
            if ins and node.op.moves_examples(ins):
                return node
        return None

    # -- edits (on a copy, inside passes) ---------------------------------------------------

    def replace(self, nid: int, **updates) -> None:
        """Replace fields of node `nid` (op, ttype, cov, materialize, loop, path)."""
        self._g.nodes[nid]['node'] = self.node(nid).model_copy(update=updates)

    def remove(self, nid: int) -> None:
        """Delete node `nid` and its edges (for dead nodes)."""
        self._order = None
        self._g.remove_node(nid)

    def bypass(self, nid: int) -> None:
        """Remove the single-input node `nid`, wiring its consumers to its input."""
        self._order = None
        (src,) = self.inputs(nid)
        for dst, slot in self.consumers(nid):
            self._g.add_edge(src, dst, slot=slot)
        self.outputs = [src if o == nid else o for o in self.outputs]
        self._g.remove_node(nid)

    def insert_on_edge(self, src: int, dst: int, op: Op, path: str) -> int:
        """Insert a single-input node on the edge src -> dst (keeping dst's slot)."""
        self._order = None
        slot = self._g.edges[src, dst]['slot']
        self._g.remove_edge(src, dst)
        nid = self.add(op, [src], path)
        self._g.add_edge(nid, dst, slot=slot)
        return nid

    def reconnect(self, src: int, dst: int, new_src: int) -> None:
        """Make `dst` read from `new_src` in the slot where it read `src`."""
        self._order = None
        slot = self._g.edges[src, dst]['slot']
        self._g.remove_edge(src, dst)
        self._g.add_edge(new_src, dst, slot=slot)

    def insert_after(self, src: int, op: Op, path: str) -> int:
        """Insert a single-input node after `src`, moving all of src's consumers to it."""
        self._order = None
        consumers = self.consumers(src)
        for dst, _ in consumers:
            self._g.remove_edge(src, dst)
        nid = self.add(op, [src], path)
        for dst, slot in consumers:
            self._g.add_edge(nid, dst, slot=slot)
        self.outputs = [nid if o == src else o for o in self.outputs]
        return nid

    # -- text and dicts ----------------------------------------------------------------------

    def __str__(self) -> str:
        lines = []
        for n in self.nodes():
            args = ', '.join(f'%{i}' for i in self.inputs(n.id))
            line = f'%{n.id} = {n.text()}({args})' if args else f'%{n.id} = {n.text()}'
            notes = []
            if n.ttype is not None:
                notes.append(n.ttype.describe() + (' gauss' if n.ttype.is_gaussian else ''))
            if n.cov is not None:
                notes.append(n.cov.describe() + (' mat' if n.materialize else '')
                             + ('' if n.loop is None else f' loop{n.loop[0]}.{n.loop[1]}'))
            notes.append(n.path)
            lines.append(f'{line:<52} # ' + ' | '.join(notes))
        lines.append('return ' + ', '.join(f'%{o}' for o in self.outputs))
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        """Plain-dict form (JSON/YAML-safe).  Ops holding Python functions cannot be dumped."""
        nodes = []
        for n in self.nodes():
            if not n.op.serializable():
                raise NtcError(f'{n.op.kind} holds Python functions and cannot be written out',
                               path=n.path, hint='build this layer in Python with ntc.stax')
            nodes.append(dict(
                id=n.id, op=n.op.model_dump(mode='json'), path=n.path,
                type=None if n.ttype is None else n.ttype.model_dump(mode='json'),
                cov=None if n.cov is None else n.cov.model_dump(mode='json'),
                materialize=n.materialize))
            if n.loop is not None:
                nodes[-1]['loop'] = list(n.loop)
        edges = sorted([s, d, a['slot']] for s, d, a in self._g.edges(data=True))
        if len(self.outputs) == 1:
            return dict(nodes=nodes, edges=edges, output=self.outputs[0])
        return dict(nodes=nodes, edges=edges, outputs=list(self.outputs))

    @classmethod
    def from_dict(cls, data: dict) -> Graph:
        """Inverse of `to_dict` (exact round trip)."""
        g = cls()
        try:
            for nd in data['nodes']:
                node = Node(id=nd['id'], op=op_from_dict(nd['op']), path=nd['path'],
                            ttype=None if nd.get('type') is None else TensorType(**nd['type']),
                            cov=None if nd.get('cov') is None else CovType(**nd['cov']),
                            materialize=nd.get('materialize', False),
                            loop=None if nd.get('loop') is None else tuple(nd['loop']))
                g._g.add_node(node.id, node=node)
            for src, dst, slot in data['edges']:
                g._g.add_edge(src, dst, slot=slot)
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f'not a valid graph dict: {e}') from e
        g._next = max(g._g.nodes, default=-1) + 1
        g.outputs = [data['output']] if 'output' in data else list(data['outputs'])
        return g

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (self.outputs == other.outputs
                and dict(self._g.nodes(data='node')) == dict(other._g.nodes(data='node'))
                and sorted(self._g.edges(data='slot')) == sorted(other._g.edges(data='slot')))

    __hash__ = None  # type: ignore[assignment]
