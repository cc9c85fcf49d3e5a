#!/usr/bin/env python3
"""Prints the crate's module import graph: one `from -> to` line per module that names
another (`use crate::x` or a `crate::x::` path), then every import circle (strongly
connected component of more than one module). Modules are top-level: `src/handler/*.rs`
counts as `handler`.

Usage: tools/imports.py [src-dir]
"""
import os
import re
import sys


def module_of(path, root):
    rel = os.path.relpath(path, root)[:-3]  # strip .rs
    return rel.split(os.sep)[0]


def main():
    args = sys.argv[1:]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    pattern = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
    edges = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            src = module_of(path, root)
            text = open(path, encoding="utf-8").read()
            # Test modules may reach anywhere.
            text = text.split("#[cfg(test)]\nmod tests")[0]
            for m in pattern.finditer(text):
                dst = m.group(1)
                if dst != src:
                    edges.setdefault(src, set()).add(dst)
    nodes = sorted(set(edges) | {d for ds in edges.values() for d in ds})
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            print(f"{src} -> {dst}")
    # Tarjan's strongly connected components.
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    print(f"\n{len(out)} import circle(s)")
    for comp in out:
        print(f"circle of {len(comp)}: {' '.join(comp)}")


if __name__ == "__main__":
    main()
