"""Execution order: the unrealized part of a graph, producers before consumers.

Walks ``_inputs`` iteratively (graphs of LLM size are deeper than Python's recursion limit) and stops
at realized nodes, which are buffers, not work.
"""
from __future__ import annotations


def toposort(outputs) -> list:
    order = []
    done = set()
    stack = [o for o in outputs if o._data is None]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in done:
            stack.pop()
            continue
        pending = False
        for i in node._inputs:
            if i._data is None and id(i) not in done:
                stack.append(i)
                pending = True
        if not pending:
            stack.pop()
            done.add(key)
            order.append(node)
    return order
