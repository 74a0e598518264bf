#!/usr/bin/env bash
# Fails when the modules of one crate import each other in a cycle.
#
#   scripts/module-cycles.sh [-v] [CRATE_DIR...]   (default: every crate of the workspace)
#
# For each crate it reads src/ (lib.rs and the files its modules live in;
# src/bin/ and main.rs are other crates), resolves every `use` and every
# inline `crate::` / `super::` / `self::` path to the module that defines
# the item (following re-exports such as `pub use a::X` at the root), and
# draws an edge between the two modules that are siblings under their
# lowest common ancestor: `crate::a::x` used in `b/c.rs` is an edge b → a.
# A module using its ancestor's items, or its own children's, is no edge
# (a parent declares its children; children share its state). Then, level
# by level, any strongly connected set of sibling modules is a cycle: the
# script prints it with the lines that make each edge and exits 1.
# `-v` prints the edges too. Inline modules (`mod tests { ... }`) count as
# their file. A glob import of the parent (`use super::*`) hides what it
# brings in; name imports instead.
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - "$@" <<'PY'
import os, re, sys

verbose = '-v' in sys.argv[1:]
crates = [a for a in sys.argv[1:] if a != '-v']
if not crates:
    crates = sorted(d for d in os.listdir('.') if os.path.isfile(os.path.join(d, 'src', 'lib.rs')))

def modules_of(src):
    """Module path (tuple) -> file, for every file under src/ but bin/ and main.rs."""
    mods = {}
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not (root == src and d == 'bin')]
        for f in files:
            if not f.endswith('.rs'):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel == ['main']:
                continue
            if rel == ['lib']:
                rel = []
            elif rel[-1] == 'mod':
                rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(root, f)
    return mods

def strip_comments(text):
    # Line comments (not inside a string on the same line, roughly) and
    # block comments; strings are blanked so their contents never parse.
    text = re.sub(r'/\*.*?\*/', ' ', text, flags=re.S)
    out = []
    for line in text.split('\n'):
        line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        out.append(line.split('//', 1)[0])
    return out

def expand(tree):
    """`a::{b, c::{d as e}, self}` -> [(path, name)]."""
    tree = re.sub(r'\s+', ' ', tree).strip()
    m = re.match(r'^(.*?)::\{(.*)\}$', tree)
    if not m and tree.startswith('{') and tree.endswith('}'):
        m = re.match(r'^()\{(.*)\}$', tree)
    if m:
        prefix, inner = m.group(1), m.group(2)
        parts, depth, cur = [], 0, ''
        for ch in inner:
            if ch == ',' and depth == 0:
                parts.append(cur); cur = ''
                continue
            depth += ch == '{'
            depth -= ch == '}'
            cur += ch
        parts.append(cur)
        res = []
        for p in (p.strip() for p in parts):
            if not p:
                continue
            if p == 'self':
                segs = prefix.split('::')
                res.append((prefix, segs[-1]))
                continue
            for path, name in expand(p):
                res.append(((prefix + '::' if prefix else '') + path, name))
        return res
    alias = re.match(r'^(.*) as (\w+)$', tree)
    if alias:
        return [(alias.group(1).strip(), alias.group(2))]
    return [(tree, tree.split('::')[-1])]

def parse(path, mod):
    """(imports: name -> (path, line), refs: [(path, line, context module)])."""
    lines = strip_comments(open(path).read())
    # Inline modules: `mod name {` up to the `}` at its indentation.
    context = [mod] * len(lines)
    i = 0
    while i < len(lines):
        m = re.match(r'^(\s*)(?:pub(?:\([\w:]+\))? )?mod (\w+) \{', lines[i])
        if m:
            end = i + 1
            while end < len(lines) and not re.match(r'^' + m.group(1) + r'\}', lines[end]):
                end += 1
            for k in range(i, min(end + 1, len(lines))):
                context[k] = mod + (('#' + m.group(2)),)
            i = end
        i += 1
    text = '\n'.join(lines)
    starts = [0]
    for l in lines:
        starts.append(starts[-1] + len(l) + 1)
    def line_of(pos):
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= pos: lo = mid
            else: hi = mid - 1
        return lo
    imports, refs, spans = {}, [], []
    for m in re.finditer(r'\buse\s+([^;]+);', text):
        ln = line_of(m.start())
        spans.append((m.start(), m.end()))
        for p, name in expand(m.group(1)):
            if context[ln] == mod and name != '*':
                imports[name] = (p, ln + 1)
            refs.append((p, ln + 1, context[ln]))
    for m in re.finditer(r'\b(?:crate|super|self)(?:::\w+)+', text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        ln = line_of(m.start())
        refs.append((m.group(0), ln + 1, context[ln]))
    return imports, refs

failed = False
for crate in crates:
    src = os.path.join(crate, 'src')
    mods = modules_of(src)
    parsed = {m: parse(f, m) for m, f in mods.items()}

    def resolve(segs, ctx, depth=0):
        """The module (tuple) defining the item `segs` names from `ctx`; None: outside the crate."""
        if depth > 20:
            return None
        inline = bool(ctx) and ctx[-1].startswith('#')
        here = tuple(s for s in ctx if not s.startswith('#'))
        first = segs[0]
        if first == 'crate':
            cur, rest = (), segs[1:]
        elif first == 'super':
            cur = here if inline else here[:-1]
            rest = segs[1:]
            while rest and rest[0] == 'super':
                cur, rest = cur[:-1], rest[1:]
        elif first == 'self':
            cur, rest = here, segs[1:]
        elif here + (first,) in mods:
            cur, rest = here, segs
        else:
            imp = parsed[here][0].get(first)
            if imp is None:
                return None
            return resolve(imp[0].split('::'), here, depth + 1)
        for i, s in enumerate(rest):
            if s == '*':
                return cur
            if cur + (s,) in mods:
                cur = cur + (s,)
                continue
            imp = parsed[cur][0].get(s)
            if imp is not None and imp[0] != s:
                target = resolve(imp[0].split('::') + rest[i + 1:], cur, depth + 1)
                return cur if target is None else target
            return cur
        return cur

    # level (parent module) -> {(from child, to child): [where]}
    levels = {}
    for mod, (imports, refs) in parsed.items():
        for path, line, ctx in refs:
            segs = path.split('::')
            if segs[0] not in ('crate', 'super', 'self') and mod + (segs[0],) not in mods \
                    and segs[0] not in imports:
                continue
            target = resolve(segs, ctx)
            if target is None:
                continue
            n = 0
            while n < min(len(mod), len(target)) and mod[n] == target[n]:
                n += 1
            if n == len(mod) or n == len(target):
                continue  # an ancestor's items, or its own descendants'
            parent = mod[:n]
            edge = (mod[n], target[n])
            levels.setdefault(parent, {}).setdefault(edge, []).append(
                '%s:%d %s' % (mods[mod], line, path))

    for parent, edges in sorted(levels.items()):
        graph = {}
        for a, b in edges:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
        if verbose:
            for (a, b), where in sorted(edges.items()):
                print('%s: %s -> %s   (%s)' % (crate + ''.join('::' + p for p in parent), a, b, where[0]))
        # Tarjan's strongly connected components.
        index, low, stack, on, sccs = {}, {}, [], set(), []
        def visit(v):
            index[v] = low[v] = len(index)
            stack.append(v); on.add(v)
            for w in sorted(graph[v]):
                if w not in index:
                    visit(w); low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v: break
                if len(comp) > 1:
                    sccs.append(sorted(comp))
        for v in sorted(graph):
            if v not in index:
                visit(v)
        for comp in sccs:
            failed = True
            where = crate + ''.join('::' + p for p in parent)
            print('cycle in %s: %s' % (where, ' <-> '.join(comp)))
            for (a, b), uses in sorted(edges.items()):
                if a in comp and b in comp:
                    print('  %s -> %s: %s' % (a, b, '; '.join(uses[:3]) + (' ...' if len(uses) > 3 else '')))

if failed:
    sys.exit(1)
print('no module cycles in: ' + ', '.join(crates))
PY
