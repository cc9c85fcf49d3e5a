#!/usr/bin/env python3
"""Prints the crate's module import graph and its circles.

A module imports another when its code names it: `use crate::x::..`, a `crate::x::` path,
`super::x`, or (in a folder's `mod.rs`) `x::` for a child module `x`. Comments (doc links
included) and `#[cfg(test)]` modules are not code that runs and are left out.

Two levels:
- top-level modules (`src/handler/**` counts as `handler`), one `from -> to` line each;
- files inside each folder (`handler/freeze -> handler/places`), for the folders' own
  layering.

Then every import circle (strongly connected component of more than one module) at each
level. `tools/fence.py` checks the layering these edges must follow.

Usage: tools/imports.py [src-dir]
"""
import os
import re
import sys

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\}\s*;", re.S)


def strip(text):
    """Code only: no comments, no string contents, no `#[cfg(test)] mod tests`."""
    text = re.split(r"#\[cfg\((?:all\()?test[^\]]*\]\s*\n\s*mod tests\b", text)[0]
    out = []
    for line in text.split("\n"):
        # Drop `//` comments (outside strings, which code paths here never contain).
        in_str = False
        cut = len(line)
        i = 0
        while i < len(line):
            c = line[i]
            if c == '"' and (i == 0 or line[i - 1] != "\\"):
                in_str = not in_str
            elif not in_str and line.startswith("//", i):
                cut = i
                break
            i += 1
        out.append(line[:cut])
    return "\n".join(out)


def file_modules(root):
    """{module path: file} for every .rs file: `handler/freeze`, `handler` for
    handler/mod.rs, `lib` for lib.rs."""
    mods = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)[:-3].replace(os.sep, "/")
            if rel.endswith("/mod"):
                rel = rel[: -len("/mod")]
            mods[rel] = path
    return mods


def resolve(segments, mods):
    """The longest module path among `segments` that is a file module."""
    best = None
    for i in range(1, len(segments) + 1):
        candidate = "/".join(segments[:i])
        if candidate in mods:
            best = candidate
        else:
            break
    return best


def file_edges(root):
    mods = file_modules(root)
    edges = {}
    for mod, path in mods.items():
        text = strip(open(path, encoding="utf-8").read())
        is_folder = path.endswith("mod.rs")
        # `super` is the parent of this module (the folder, for a file inside one).
        parent = mod.rsplit("/", 1)[0] if "/" in mod else ""
        targets = set()

        def add(kind, segs):
            full = segs if kind == "crate" else (parent.split("/") if parent else []) + segs
            target = resolve(full, mods) if full else None
            if target and target != mod:
                targets.add(target)

        for m in USE_GROUP.finditer(text):
            prefix = [s for s in m.group(2).split("::") if s]
            for item in re.split(r",", m.group(3)):
                item = item.strip().split(" as ")[0].strip()
                if not item or item == "self":
                    add(m.group(1), prefix)
                    continue
                add(m.group(1), prefix + [s for s in re.split(r"::|\{", item) if s and s.isidentifier()])
        for m in PATH.finditer(text):
            add(m.group(1), [s for s in m.group(2).split("::") if s])
        if is_folder:
            for child in re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", text, re.M):
                if re.search(r"(?<![A-Za-z0-9_:])" + child + r"::", text.replace(f"mod {child};", "")):
                    targets.add(f"{mod}/{child}")
        if targets:
            edges[mod] = targets
    return mods, edges


def top(mod):
    return mod.split("/")[0]


def top_edges(edges):
    out = {}
    for src, dsts in edges.items():
        for dst in dsts:
            if top(src) != top(dst):
                out.setdefault(top(src), set()).add(top(dst))
    return out


def folder_edges(edges, folder):
    out = {}
    for src, dsts in edges.items():
        for dst in dsts:
            if top(src) == folder and top(dst) == folder and src != dst:
                out.setdefault(src, set()).add(dst)
    return out


def circles(edges):
    """Tarjan's strongly connected components of more than one node."""
    nodes = sorted(set(edges) | {d for ds in edges.values() for d in ds})
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
    return out


def main():
    args = sys.argv[1:]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    mods, edges = file_edges(root)
    report(top_edges(edges), "between top-level modules", "")
    for folder in sorted({top(m) for m in mods if "/" in m}):
        print(f"\n{folder}/:")
        report(folder_edges(edges, folder), f"inside {folder}/", "  ")


def report(edges, where, indent):
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            print(f"{indent}{src} -> {dst}")
    found = circles(edges)
    print(f"{indent if indent else chr(10)}{len(found)} import circle(s) {where}")
    for comp in found:
        print(f"{indent}circle of {len(comp)}: {' '.join(comp)}")


if __name__ == "__main__":
    main()
