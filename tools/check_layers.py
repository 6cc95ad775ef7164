#!/usr/bin/env python3
"""Fails when a folder of src/ includes a header of a folder it may not use.

The allowed dependencies are src/layers.txt ("folder: folders below it that it uses"); a folder
may include its own headers, those of the listed folders and, transitively, of everything they
may use. src/main.cpp is the folder "main". Every folder of src/ must be listed.

  tools/check_layers.py [SRC_DIR]      check SRC_DIR (default: src next to this script)
  tools/check_layers.py --self-test    check that a wrong-direction include is caught
"""
import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"/]+)/[^"]*"')


def read_table(path):
    deps = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if ":" not in line:
                raise SystemExit(f"{path}:{n}: expected 'folder: deps'")
            name, rest = line.split(":", 1)
            deps[name.strip()] = rest.split()
    for name, ds in deps.items():
        for d in ds:
            if d not in deps:
                raise SystemExit(f"{path}: {name} uses unknown folder {d}")
    return deps


def closure(deps):
    allowed = {}

    def visit(name, stack):
        if name in allowed:
            return allowed[name]
        if name in stack:
            raise SystemExit("layers.txt: cycle through " + " -> ".join(stack + [name]))
        out = set()
        for d in deps[name]:
            out.add(d)
            out |= visit(d, stack + [name])
        allowed[name] = out
        return out

    for name in deps:
        visit(name, [])
    return allowed


def sources(src):
    """(folder, path) of every C++ file of src/."""
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if os.path.isfile(path) and entry.endswith((".cpp", ".h")):
            yield "main", path
        elif os.path.isdir(path):
            for root, _, files in os.walk(path):
                for f in sorted(files):
                    if f.endswith((".cpp", ".h")):
                        yield entry, os.path.join(root, f)


def check(src):
    """List of violations (strings) for the tree at src."""
    deps = read_table(os.path.join(src, "layers.txt"))
    allowed = closure(deps)
    problems = []
    folders = {e for e in os.listdir(src) if os.path.isdir(os.path.join(src, e))}
    for f in sorted(folders - set(deps)):
        problems.append(f"{src}/{f}: folder missing from layers.txt")
    for folder, path in sources(src):
        if folder not in deps:
            continue
        with open(path, errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                target = m.group(1)
                if target == folder or target in allowed[folder]:
                    continue
                if target not in deps:
                    continue  # not one of src/'s folders (e.g. a system header path)
                problems.append(f"{path}:{n}: {folder} may not include {target}/ "
                                f"({folder} uses: {' '.join(sorted(allowed[folder])) or 'nothing'})")
    return problems


def self_test():
    table = "common:\nmodel: common\ndesired: model\nk8s: model\nmain: desired k8s\n"
    cases = [
        # (file, content, expected number of violations)
        ("desired/a.h", '#include "model/m.h"\n#include "common/c.h"\n#include "desired/b.h"\n', 0),
        ("model/m.h", '#include "desired/a.h"\n', 1),       # lower includes higher
        ("desired/b.cpp", '  #  include "k8s/x.h"\n', 1),    # sibling, not below
        ("common/c.h", '#include <model/not_ours.h>\n#include "vendor/x.h"\n', 0),
        ("main.cpp", '#include "k8s/x.h"\n#include "common/c.h"\n', 0),
    ]
    failed = False
    for rel, content, want in cases:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "layers.txt"), "w") as f:
                f.write(table)
            for folder in ("common", "model", "desired", "k8s"):
                os.mkdir(os.path.join(d, folder))
            with open(os.path.join(d, rel), "w") as f:
                f.write(content)
            got = check(d)
            if len(got) != want:
                failed = True
                print(f"self-test {rel}: expected {want} violation(s), got {got}")
    with tempfile.TemporaryDirectory() as d:  # an unlisted folder is reported
        with open(os.path.join(d, "layers.txt"), "w") as f:
            f.write(table)
        os.mkdir(os.path.join(d, "extra"))
        if len(check(d)) != 1:
            failed = True
            print("self-test: an unlisted folder was not reported")
    print("self-test " + ("FAILED" if failed else "passed"))
    return 1 if failed else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src")
    problems = check(src)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} include(s) against src/layers.txt (docs/architecture.md)")
        return 1
    print("layers: every include follows src/layers.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
