#!/usr/bin/env python3
"""Fail if the extension's modules depend on each other in a cycle.

Reads every file under src/, takes each `crate::...` path it names (in `use` lines and in the
code), maps it to the module file it lands in, and looks for cycles (strongly connected
components of more than one module), at two levels: between files (`standby/round.rs` ->
`standby/copy.rs`), and between the top-level parts (`standby` -> `primary`). A module that
names its own submodules, or its parent, does not count. Run by `./run lint`.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3]  # drop .rs
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def files():
    for dirpath, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def main():
    modules = {module_of(p): p for p in files()}
    edges = {m: set() for m in modules}
    path_re = re.compile(r"crate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)")
    group_re = re.compile(r"use crate::((?:[a-z_][a-z0-9_]*::)*)\{([^}]*)\}", re.S)
    for module, path in modules.items():
        text = open(path).read()
        # Test modules may reach anywhere.
        text = text.split("mod tests {")[0]
        named = [m.group(1).split("::") for m in path_re.finditer(text)]
        for g in group_re.finditer(text):
            prefix = [p for p in g.group(1).split("::") if p]
            for item in g.group(2).split(","):
                item = item.strip().split("::")[0].split(" ")[0]
                if item and item != "self":
                    named.append(prefix + [item])
        for parts in named:
            # The longest prefix that is a module.
            for n in range(len(parts), 0, -1):
                target = tuple(parts[:n])
                if target in modules:
                    break
            else:
                continue
            if target == module or target == module[: len(target)] or module == target[: len(module)]:
                continue  # itself, an ancestor, or a descendant
            edges[module].add(target)

    def sccs(graph):
        index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph[v]:
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

        for v in graph:
            if v not in index:
                visit(v)
        return out

    parts = {}
    for m, targets in edges.items():
        top = m[:1] or ("lib",)
        parts.setdefault(top, set())
        for t in targets:
            ttop = t[:1] or ("lib",)
            if ttop != top:
                parts[top].add(ttop)
    for t in list(parts.values()):
        for x in t:
            parts.setdefault(x, set())

    bad = False
    for level, graph in (("module", edges), ("part", parts)):
        for comp in sccs(graph):
            bad = True
            names = ["/".join(c) or "lib" for c in comp]
            print(f"module_cycles: a cycle between {level}s: {', '.join(names)}", file=sys.stderr)
            for c in comp:
                deps = sorted("/".join(t) for t in graph[c] if t in comp)
                print(f"  {'/'.join(c) or 'lib'} -> {', '.join(deps)}", file=sys.stderr)
    if bad:
        sys.exit(1)
    print(f"module_cycles: {len(modules)} modules, {len(parts)} parts, no cycle")


if __name__ == "__main__":
    main()
