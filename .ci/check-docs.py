#!/usr/bin/env python3
"""Fails on a dead relative link in any tracked Markdown file, or a dead citation of a
Markdown file (optionally with a #section) in the sources.

Markdown: every [text](target) whose target is not a URL must name a file or directory of
the repository, relative to the Markdown file; a #fragment on a Markdown target (or alone)
must be one of that file's headings, as GitHub makes anchors of them.

Sources (.rs, .toml, .sh, .py, .c, .h, Makefile, .ci/run): a mention of `some/path.md` or
`some/path.md#section` must name a Markdown file of the repository (from the repository root,
or from the citing file's directory) and, with a section, one of its headings. `DESIGN.md`
in capitals is the old name of docs/design.md and is always an error. Paths under
`../shared` are outside the repository and not checked.

    python3 .ci/check-docs.py        # from anywhere inside the repository; exit 1 on a dead link
"""
import os
import re
import subprocess
import sys

ROOT = subprocess.run(
    ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True,
    cwd=os.path.dirname(os.path.abspath(__file__)),
).stdout.strip()

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
CITATION = re.compile(r"(?<![\w./-])((?:\.\./|\./)?[\w][\w./-]*\.md)(#[\w-]+)?")
SOURCE_SUFFIXES = (".rs", ".toml", ".sh", ".py", ".c", ".h")
SOURCE_NAMES = ("Makefile", "run")


def tracked(*patterns):
    out = subprocess.run(["git", "ls-files", "-z", "--", *patterns], capture_output=True,
                         check=True, cwd=ROOT).stdout.decode()
    return [p for p in out.split("\0") if p]


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    if path not in _anchors:
        found, seen, fence = set(), {}, None
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = re.match(r"^\s*(```|~~~)", line)
                if m:
                    fence = None if fence == m.group(1) else (fence or m.group(1))
                    continue
                if fence:
                    continue
                m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
                if m:
                    base = slug(m.group(1))
                    n = seen.get(base, 0)
                    seen[base] = n + 1
                    found.add(base if n == 0 else f"{base}-{n}")
        _anchors[path] = found
    return _anchors[path]


def strip_code(text):
    """Markdown without fenced blocks and inline code, where [x](y) is not a link."""
    text = re.sub(r"(?ms)^\s*(```|~~~).*?^\s*\1[^\n]*$", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def check_target(origin, base_dir, target, problems):
    path, _, fragment = target.partition("#")
    if path:
        full = os.path.normpath(os.path.join(base_dir, path))
        if not full.startswith(ROOT + os.sep) and full != ROOT:
            problems.append(f"{origin}: {target}: leaves the repository")
            return
        if not os.path.exists(full):
            problems.append(f"{origin}: {target}: no such file")
            return
    else:
        full = os.path.join(ROOT, origin.split(":")[0])
    if fragment:
        if not full.endswith(".md") or os.path.isdir(full):
            problems.append(f"{origin}: {target}: a section of a file that is not Markdown")
        elif fragment not in anchors(full):
            problems.append(f"{origin}: {target}: no heading #{fragment} in "
                            f"{os.path.relpath(full, ROOT)}")


def main():
    problems = []
    markdown = tracked("*.md")
    for md in markdown:
        with open(os.path.join(ROOT, md), encoding="utf-8") as f:
            text = f.read()
        base = os.path.dirname(os.path.join(ROOT, md))
        for lineno, line in enumerate(strip_code(text).split("\n"), 1):
            for m in LINK.finditer(line):
                target = m.group(1) or m.group(2)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # https:, mailto:
                check_target(md, base, target, problems)
        if "DESIGN.md" in text:
            problems.append(f"{md}: cites DESIGN.md, which is docs/design.md")

    sources = [p for p in tracked() if p.endswith(SOURCE_SUFFIXES)
               or os.path.basename(p) in SOURCE_NAMES]
    for src in sources:
        if src == ".ci/check-docs.py":
            continue
        with open(os.path.join(ROOT, src), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        for lineno, line in enumerate(lines, 1):
            where = f"{src}:{lineno}"
            if "DESIGN.md" in line:
                problems.append(f"{where}: cites DESIGN.md, which is docs/design.md")
                continue
            for m in CITATION.finditer(line):
                path, fragment = m.group(1), m.group(2) or ""
                if path.startswith("../shared/") or "/shared/" in path:
                    continue
                candidates = [os.path.join(ROOT, path),
                              os.path.join(ROOT, os.path.dirname(src), path)]
                found = next((c for c in candidates if os.path.isfile(c)), None)
                if found is None:
                    problems.append(f"{where}: {path}: no such file in the repository")
                    continue
                if fragment and fragment[1:] not in anchors(found):
                    problems.append(f"{where}: {path}{fragment}: no such heading")

    for p in problems:
        print(p)
    checked = f"{len(markdown)} Markdown files, {len(sources)} sources"
    if problems:
        print(f"check-docs: {len(problems)} dead link(s) or citation(s) in {checked}")
        return 1
    print(f"check-docs: every relative link and citation resolves ({checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
