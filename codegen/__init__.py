"""Scheduling and code generation (installed as ``mlxarm.codegen``).

``schedule`` orders the unrealized part of a graph for execution; the fusion pass and the kernel
renderers build on that order.
"""
