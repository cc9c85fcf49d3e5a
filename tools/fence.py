#!/usr/bin/env python3
"""Checks the crate's layering and fences the signal-handler zone. Run by `.ci/run`.

1. Layers: every import between top-level modules goes down `TOP` (a module may name
   only modules listed after it), and every import between the files of one folder goes
   down that folder's list in `FOLDERS`. So there is no import circle, at either level.
2. The zone's imports: code in the zone (`src/handler/**` and `src/sys/async_safe.rs`,
   everything the signal handler can reach) names only the modules in `ZONE_MAY_IMPORT`.
3. The zone's code: no allocation, no lock, no formatting, no printing, no thread
   spawning, no panicking helper (`unwrap`, `expect`), outside `#[cfg(test)]` modules and
   outside marked items. An item (or a field) preceded, above its doc comment and
   attributes, by a comment line starting
   - `// Ordinary context:` runs only on ordinary threads: the handler never calls it;
   - `// Built in ordinary context:` holds a value made and dropped on ordinary threads,
     which the handler only reads (a table behind a pointer, a boxed slice).
   The comment says why. Everything else in the zone is async-signal-safe, whichever
   thread runs it.
4. The compiler's half of the fence agrees: clippy denies the same allocating types,
   locks, printing macros and panicking helpers in the zone (`clippy.toml`, `#![deny]` in
   `handler/mod.rs` and `sys/async_safe.rs`), and a marked item allows them with
   `ALLOW`. Each marker carries that attribute, and the attribute appears nowhere else.

Imports are what `tools/imports.py` reads (code paths, not comments).

Usage: tools/fence.py [src-dir]      check, exit 1 on a violation
       tools/fence.py --self-test    plant one violation of each kind in a copy of src/
                                     and check that each is caught (and the copy passes
                                     before)
"""
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imports import file_edges, strip, top  # noqa: E402

# Top-level modules, top to bottom: the API, the engine on ordinary threads, the
# monitor's kill registry, tasks, the handler zone, leaves, lock-free protocols, system
# calls.
TOP = [
    "lib", "builder", "pool", "join", "service", "stats", "alloc",
    "runtime",
    "kill",
    "task",
    "handler",
    "error", "counters", "budget",
    "sync",
    "sys",
]

# Files inside each folder, top to bottom (the folder's `mod.rs` is the folder's name).
FOLDERS = {
    "runtime": [
        "runtime", "runtime/monitor", "runtime/carrier", "runtime/runner",
        "runtime/shared", "runtime/slot", "runtime/steal", "runtime/signal",
        "runtime/text_scan",
    ],
    "handler": [
        "handler", "handler/freeze", "handler/walk", "handler/frames", "handler/places", "handler/tick",
        "handler/chain", "handler/record", "handler/ledger", "handler/control",
        "handler/timer", "handler/history",
    ],
    "task": ["task", "task/wake"],
    "sync": ["sync", "sync/reserve", "sync/sleep", "sync/spawn_gate", "sync/loom"],
    "sys": ["sys", "sys/async_safe"],
}

ZONE_FILES = ("handler", "handler/", "sys/async_safe")
ZONE_MAY_IMPORT = ("handler", "budget", "counters", "sync/loom", "sync/reserve", "sys/async_safe")

# What zone code may not contain (outside marked items and tests), and why.
FORBIDDEN = [
    (r"\b(format|print|println|eprint|eprintln|write|writeln|dbg|vec|todo|unimplemented)!",
     "formatting, printing or allocating macro"),
    (r"\b(Box|Vec|String|Arc|Rc|HashMap|BTreeMap|VecDeque)\s*(::|<)", "allocating type"),
    (r"\.(to_string|to_owned|to_vec|collect|into_boxed_slice)\s*\(", "allocating call"),
    (r"\b(Mutex|RwLock|Condvar|Once|OnceLock|LazyLock|Barrier)\b", "lock"),
    (r"\.lock\s*\(", "lock"),
    (r"\b(thread::spawn|thread::Builder|thread::current|thread::sleep)\b", "thread call"),
    (r"\.(unwrap|expect)\s*\(", "panicking helper"),
    (r"\bparking_lot\b", "lock"),
]

MARK = "// Ordinary context:"
MARKS = (MARK, "// Built in ordinary context:")
ALLOW = "#[allow(clippy::disallowed_types, clippy::disallowed_macros, clippy::disallowed_methods)]"


def is_zone(mod):
    return mod == "handler" or mod.startswith("handler/") or mod == "sys/async_safe"


def allowed_in_zone(target):
    return any(target == m or target.startswith(m + "/") for m in ZONE_MAY_IMPORT)


def ordinary_lines(text):
    """Line numbers (1-based) inside items marked ordinary context, and inside
    `#[cfg(test)]` modules."""
    lines = text.split("\n")
    out = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        test_mod = re.match(r"\s*#\[cfg\((all\()?test", line) and i + 1 < len(lines) and re.match(
            r"\s*(pub(\([a-z]+\))?\s+)?mod\s", lines[i + 1])
        if line.strip().startswith(MARKS) or test_mod:
            start = i
            j = i + 1
            # Skip the rest of the marker comment, doc comments and attributes (an attribute
            # may span lines, as rustfmt wraps a long one).
            while j < len(lines) and re.match(r"\s*(//|#\[|#!\[)", lines[j]):
                if lines[j].lstrip().startswith("#"):
                    j = attribute_end(lines, j)
                j += 1
            if j >= len(lines):
                break
            indent = len(lines[j]) - len(lines[j].lstrip())
            k = j
            if not lines[j].rstrip().endswith((";", ",")):
                k = j + 1
                while k < len(lines):
                    l = lines[k]
                    if l.strip() and len(l) - len(l.lstrip()) == indent and l.strip().startswith("}"):
                        break
                    k += 1
            out.update(range(start + 1, k + 2))
            i = k + 1
            continue
        i += 1
    return out


def check(root):
    mods, edges = file_edges(root)
    problems = []
    order = {m: i for i, m in enumerate(TOP)}
    for m in mods:
        if top(m) not in order:
            problems.append(f"{m}: top-level module `{top(m)}` is in no layer (add it to TOP)")
    for src, dsts in sorted(edges.items()):
        for dst in sorted(dsts):
            a, b = top(src), top(dst)
            if a != b:
                if a in order and b in order and order[b] <= order[a]:
                    problems.append(f"{src} -> {dst}: imports upward ({b} is above {a})")
            else:
                inner = FOLDERS.get(a)
                if inner is None:
                    continue
                if src not in inner or dst not in inner:
                    missing = src if src not in inner else dst
                    problems.append(f"{missing}: file in no layer of {a}/ (add it to FOLDERS)")
                elif inner.index(dst) <= inner.index(src):
                    problems.append(f"{src} -> {dst}: imports upward inside {a}/")
            if is_zone(src) and not is_zone(dst) and not allowed_in_zone(dst):
                problems.append(f"{src} -> {dst}: the zone may import only {', '.join(ZONE_MAY_IMPORT)}")
    for mod, path in sorted(mods.items()):
        if not is_zone(mod):
            continue
        raw = open(path, encoding="utf-8").read()
        problems += check_allows(os.path.relpath(path, root), raw)
        skip = ordinary_lines(raw)
        code = strip(raw + "\n")
        # `strip` cuts the test module off; keep line numbers by padding.
        code_lines = code.split("\n")
        for n, line in enumerate(code_lines, 1):
            if n in skip:
                continue
            for pattern, what in FORBIDDEN:
                m = re.search(pattern, line)
                if m:
                    problems.append(f"{os.path.relpath(path, root)}:{n}: {what} in the zone: `{m.group(0)}`"
                                    f" (mark the item `{MARK} ...` if the handler never calls it)")
    return problems


def attribute_end(lines, i):
    """The index of the last line of the attribute that starts on line `i`."""
    depth = 0
    for k in range(i, len(lines)):
        depth += lines[k].count("[") - lines[k].count("]")
        if depth <= 0:
            return k
    return len(lines) - 1


def attribute_at(lines, i):
    """The attribute starting on line `i`, on one line, spaces normalised."""
    text = " ".join(l.strip() for l in lines[i:attribute_end(lines, i) + 1])
    return re.sub(r"\s+", " ", text.replace("( ", "(").replace(" )", ")").replace(",)", ")"))


def check_allows(rel, raw):
    """Every marker comment is followed (after the rest of its comment) by `ALLOW`, and
    `ALLOW`, or any allow of the zone's clippy lints, appears only there."""
    problems = []
    lines = raw.split("\n")
    blessed = set()
    for i, line in enumerate(lines):
        if line.strip().startswith(MARKS):
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("//") and not lines[j].strip().startswith("///"):
                j += 1
            if j < len(lines) and lines[j].lstrip().startswith("#[") and attribute_at(lines, j) == ALLOW:
                blessed.add(j)
            else:
                problems.append(f"{rel}:{i + 1}: a marked item without `{ALLOW}` after its marker")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#[") and "clippy::disallowed_" in attribute_at(lines, i) \
                and "allow(" in attribute_at(lines, i) and i not in blessed:
            problems.append(f"{rel}:{i + 1}: the zone's clippy lints allowed without a marker comment")
    return problems


PLANTS = [
    # (file, anchor to insert after, text, what must be reported)
    ("handler/ledger.rs", "use crate::sync::loom::Futex;\n", "use crate::kill::Kills;\n",
     "the zone may import only"),
    ("task/mod.rs", "use crate::sys;\n", "use crate::runtime::shared::Shared;\n", "imports upward"),
    ("handler/record.rs", "use crate::sync::reserve::Reserve;\n", "use super::tick::poke;\n",
     "imports upward inside handler/"),
    ("handler/ledger.rs", "    pub(crate) fn refused(&self) {\n",
     "        let _ = format!(\"{}\", 1);\n", "formatting"),
    ("handler/control.rs", "    pub(crate) fn is_cancelled(&self) -> bool {\n",
     "        let _m = std::sync::Mutex::new(0);\n", "lock in the zone"),
    ("handler/tick.rs", "/// Arms the one-shot precise timer (for a clock that sharpens its ticks).\n",
     ALLOW + "\n", "allowed without a marker comment"),
]


def self_test(root):
    clean = check(root)
    if clean:
        print("self-test: the tree itself fails the fence:\n  " + "\n  ".join(clean))
        return 1
    failures = 0
    for rel, anchor, text, expect in PLANTS:
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, "src")
            shutil.copytree(root, copy)
            path = os.path.join(copy, rel)
            body = open(path, encoding="utf-8").read()
            if anchor not in body:
                print(f"self-test: anchor for the plant in {rel} not found: {anchor!r}")
                failures += 1
                continue
            open(path, "w", encoding="utf-8").write(body.replace(anchor, anchor + text, 1))
            found = [p for p in check(copy) if expect in p]
            status = "caught" if found else "MISSED"
            print(f"self-test: planted {text.strip()!r} in {rel}: {status}")
            if not found:
                failures += 1
    print("self-test: " + ("ok" if not failures else f"{failures} plant(s) missed"))
    return 1 if failures else 0


def main():
    args = sys.argv[1:]
    root_default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if args and args[0] == "--self-test":
        sys.exit(self_test(args[1] if len(args) > 1 else root_default))
    root = args[0] if args else root_default
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"fence: {len(problems)} violation(s)")
        sys.exit(1)
    print("fence: layers and zone clean")


if __name__ == "__main__":
    main()
