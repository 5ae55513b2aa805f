#!/usr/bin/env python3
"""The module graph of the library crates: which source file imports which, and its circles.

Reads every `.rs` file under each crate's `src/`, collects the paths that name another file's
module (`use crate::..`, `use super::..`, `use self::..`, a child module named by its first
segment, and `crate::a::B` / `super::B` written inline), and maps each to the file that
defines it. A name the target re-exports (`pub use x::B` in lib.rs or a mod.rs) is followed to
the file that defines it, so a facade does not make every file depend on every other. Test
code is left out: `#[cfg(test)]` items (modules, functions, `use` lines) and files that are
only declared as `#[cfg(test)] mod x;`.

Prints, per crate, the circles (strongly connected components of more than one file, each
with the imports that close it), the imports that point up the layering (see LAYERS), and a
summary line. Exits 1 when any crate has a circle that is not in KNOWN_CIRCLES (with its
files exactly); imports up are reported, not failed.

    scripts/module-graph.py            # circles and imports up, exit 1 on a circle
    scripts/module-graph.py --edges    # also every file's imports
    scripts/module-graph.py --root DIR # the same for another checkout (before/after figures)

Python 3 standard library only.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "--root" in sys.argv[1:]:  # another checkout, for before/after figures
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
CRATES = ["consumer-core", "checkpoint-store"]

# The layering, bottom first: a file may import files of its own layer and of the layers
# below. An import of a file in a higher layer "points up" (reported, not failed). Patterns
# are module paths (`shard::*` is every module under shard); the first match wins; a module
# no pattern names is in the top layer.
LAYERS = {
    "consumer-core": [
        # vocabulary: errors, names, the streams API's types, policies and values with no I/O
        ["error", "streams::api", "streams::wrapper", "retry", "stream_arn", "fencing_clock", "events",
         "delivery", "failure", "start_time", "attribute_de", "change", "json", "lambda",
         "lambda::*", "signals", "lag", "budget"],
        # the outside and the user's side: the SDK, health and metrics, the poll loop, the
        # processor and its checkpointer
        ["streams", "streams::sdk", "observability", "poll_loop", "checkpointer", "processor",
         "dead_letter"],
        # the stream's shards, the snapshot plan, the settings, the lease-free reader
        ["shard_graph", "snapshot", "snapshot::scan", "config", "reader"],
        # coordination: shard sync, liveness and balance, heartbeats, hints, the leader
        ["shard_sync", "lease_protocol", "heartbeat", "announce", "leader"],
        # the delivery engine: what tasks share, the callback rule, shards and segments
        ["runtime", "callback", "shard", "shard::*", "snapshot::*"],
        # the worker loop and the public entry point
        ["worker", "worker::*", "consumer", "pipeline", "testkit", "testkit::*", "crate"],
    ],
    "checkpoint-store": [
        # the model: positions, leases, the error that names them, how we call AWS
        ["sequence", "checkpoint", "error", "parse", "lease", "aws", "aws::*"],
        # the store's contract, its wrappers, its coordination items, in-memory item tables
        ["store", "wrapper", "membership", "pipeline", "item_tables"],
        # the stores, their billing model and transactions
        ["memory", "dynamodb", "dynamodb::*", "billing", "transaction", "conformance", "conformance::*",
         "crate"],
    ],
}


# Circles known and not cut yet, each with why: one of exactly these files is reported, not
# failed. Any other circle (a new one, or a known one that grew) fails. Cut, then delete.
KNOWN_CIRCLES = {}


def strip_comments_and_strings(text):
    """The code without comments, string and char literals (kept as empty quotes)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            out.append("\n" * text.count("\n", i, end))
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12])
            out.append("''")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def item_end(code, start):
    """Where the item starting at `start` ends: its `;` or its closing brace."""
    depth = 0
    i = start
    while i < len(code):
        c = code[i]
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
            if depth == 0 and c == "}":
                return i + 1
        elif c == ";" and depth == 0:
            return i + 1
        i += 1
    return len(code)


CFG_TEST = re.compile(r"#\[cfg\(test\)\]")


def without_test_items(code):
    """The code with every `#[cfg(test)]` item cut out, and the names of test-only modules."""
    test_mods = set()
    parts, pos = [], 0
    for m in CFG_TEST.finditer(code):
        if m.start() < pos:
            continue
        parts.append(code[pos:m.start()])
        rest = m.end()
        # further attributes of the same item
        while True:
            a = re.match(r"\s*#\[", code[rest:])
            if not a:
                break
            rest = item_end(code, rest + a.end() - 1)
        decl = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code[rest:])
        if decl:
            test_mods.add(decl.group(1))
        end = item_end(code, rest)
        parts.append("\n" * code.count("\n", m.start(), end))
        pos = end
    parts.append(code[pos:])
    return "".join(parts), test_mods


def non_test_lines(text):
    """Lines before the first `#[cfg(test)]` (the measure of a file's size the team uses)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("#[cfg(test)]"):
            return i
    return len(lines)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]] (aliases dropped, globs kept)."""
    tokens = re.findall(r"\w+|\*|::|[{},]", re.sub(r"\s+as\s+\w+", "", tree))
    pos = 0

    def parse(prefix):
        # one tree: segments, then optionally a braced list of trees
        nonlocal pos
        seg = prefix[:]
        while pos < len(tokens):
            t = tokens[pos]
            if t == "::":
                pos += 1
            elif t == "{":
                pos += 1
                out = []
                while pos < len(tokens) and tokens[pos] != "}":
                    if tokens[pos] == ",":
                        pos += 1
                        continue
                    out.extend(parse(seg))
                pos += 1
                return out
            elif t in ",}":
                break
            else:
                seg.append(t)
                pos += 1
        return [seg] if seg else []

    return parse([])


USE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")
INLINE = re.compile(r"(?<![\w:])(crate|super|self)((?:::\w+)+)")


class Crate:
    def __init__(self, name):
        self.name = name
        self.src = ROOT / name / "src"
        self.files = {}  # module path (tuple) -> file
        self.code = {}  # module path -> code without test items
        self.test_files = set()
        for f in sorted(self.src.rglob("*.rs")):
            rel = f.relative_to(self.src).with_suffix("")
            parts = list(rel.parts)
            if parts == ["lib"]:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            self.files[tuple(parts)] = f
        for mod, f in self.files.items():
            code, test_mods = without_test_items(strip_comments_and_strings(f.read_text()))
            self.code[mod] = code
            for t in test_mods:
                self.test_files.add(mod + (t,))
        # files reached only through a test module are test code too
        for mod in list(self.files):
            if any(mod[:k] in self.test_files for k in range(1, len(mod) + 1)):
                self.test_files.add(mod)
        for t in self.test_files:
            self.files.pop(t, None)
            self.code.pop(t, None)
        self.reexports = {mod: self._reexports(mod) for mod in self.files}

    def name(self, mod):
        return "/".join(mod) + ".rs" if mod else "lib.rs"

    def rel(self, mod):
        return str(self.files[mod].relative_to(self.src))

    def regions(self, mod):
        """The file's code split by inline `mod x { .. }` blocks: (code, module path) pairs,
        so `super::` inside an inline module is resolved from that module."""
        out = []

        def walk(code, path):
            pos, rest = 0, []
            for m in re.finditer(r"\bmod\s+(\w+)\s*\{", code):
                if m.start() < pos:
                    continue
                rest.append(code[pos:m.start()])
                end = item_end(code, m.end() - 1)
                walk(code[m.end():end - 1], path + (m.group(1),))
                pos = end
            rest.append(code[pos:])
            out.append(("".join(rest), path))

        walk(self.code[mod], mod)
        return out

    def _uses(self, mod):
        """(is_pub, path from the crate root) for each `use` of the file (None: another crate)."""
        out = []
        for code, at in self.regions(mod):
            for m in USE.finditer(code):
                for path in expand_use_tree(m.group(2)):
                    out.append((bool(m.group(1)), self.absolute(at, path)))
        return out

    def absolute(self, mod, path):
        """A path as written in `mod`, as a path from the crate root (None: another crate)."""
        path = [p for p in path if p != "*"]
        if not path:
            return None
        head = path[0]
        if head == "crate":
            return path[1:]
        if head == "self":
            return list(mod) + path[1:]
        if head == "super":
            base = list(mod)
            while path and path[0] == "super":
                base = base[:-1]
                path = path[1:]
            return base + path
        if tuple(mod) + (head,) in self.files:
            return list(mod) + path  # a child module, named without `self::`
        return None

    def _reexports(self, mod):
        """Names `mod` re-exports: name -> absolute path it comes from."""
        out = {}
        for m in USE.finditer(self.code[mod]):
            if not m.group(1):
                continue
            for path in expand_use_tree(m.group(2)):
                a = self.absolute(mod, path)
                if a:
                    out[a[-1]] = a
        return out

    def target(self, path, seen=None):
        """The file defining what `path` (absolute) names."""
        seen = seen or set()
        for k in range(len(path), -1, -1):
            mod = tuple(path[:k])
            if mod in self.files or mod in self.test_files:
                if mod in self.test_files:
                    return None
                rest = path[k:]
                if rest and rest[0] in self.reexports.get(mod, {}) and (mod, rest[0]) not in seen:
                    seen.add((mod, rest[0]))
                    via = self.reexports[mod][rest[0]]
                    return self.target(via + rest[1:], seen)
                return mod
        return None

    def edges(self):
        """module -> {imported module: [the paths that import it, as written]}."""
        graph = {mod: {} for mod in self.files}
        for mod in self.files:
            paths = []
            for _, a in self._uses(mod):
                if a is not None:
                    paths.append(a)
            for code, at in self.regions(mod):
                code = re.sub(r"pub\(in [^)]*\)", "", USE.sub("", code))
                for m in INLINE.finditer(code):
                    segs = [m.group(1)] + m.group(2).split("::")[1:]
                    a = self.absolute(at, segs)
                    if a is not None:
                        paths.append(a)
            for a in paths:
                t = self.target(a)
                if t is not None and t != mod:
                    graph[mod].setdefault(t, []).append("::".join(a))
        return graph

    def layer(self, mod):
        name = "::".join(mod) if mod else "crate"
        layers = LAYERS.get(self.name, [])
        for i, patterns in enumerate(layers):
            for p in patterns:
                if p == name or (p.endswith("::*") and name.startswith(p[:-3] + "::")):
                    return i
        return len(layers)


def circles(graph):
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def main():
    show_edges = "--edges" in sys.argv[1:]
    total_circles = 0
    for name in CRATES:
        crate = Crate(name)
        graph = crate.edges()
        comps = circles(graph)
        known = KNOWN_CIRCLES.get(name, {})
        failing = [c for c in comps if frozenset(crate.rel(m) for m in c) not in known]
        up = [(a, b) for a in graph for b in graph[a] if crate.layer(b) > crate.layer(a)]
        n_edges = sum(len(v) for v in graph.values())
        print(f"{name}: {len(crate.files)} files, {n_edges} imports between files, "
              f"{len(comps)} circles ({len(comps) - len(failing)} known), "
              f"{len(up)} imports up the layering")
        for comp in comps:
            members = set(comp)
            why = known.get(frozenset(crate.rel(m) for m in comp))
            label = f"known circle ({why})" if why else "circle"
            print(f"  {label}: " + ", ".join(crate.rel(m) for m in comp))
            for a in comp:
                for b, paths in sorted(graph[a].items()):
                    if b in members:
                        print(f"    {crate.rel(a)} -> {crate.rel(b)}: {', '.join(sorted(set(paths)))}")
        for a, b in sorted(up):
            print(f"  up: {crate.rel(a)} (layer {crate.layer(a)}) -> {crate.rel(b)} "
                  f"(layer {crate.layer(b)}): {', '.join(sorted(set(graph[a][b])))}")
        if show_edges:
            for a in sorted(graph):
                for b in sorted(graph[a]):
                    print(f"  {crate.rel(a)} -> {crate.rel(b)}")
        total_circles += len(failing)
    if total_circles:
        print(f"module graph: {total_circles} circles between files that are not known (want none)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
