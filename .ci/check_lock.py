"""Fail when this Python's installed packages differ from a lock file (.ci/lock writes them).

Every pinned package must be installed at exactly its pinned version (PEP 440 `==`, so the lock's
`torch==2.13.0+cpu` is what pip installed), and every distribution hf-cskd needs (its requirements with
the given extras, followed transitively) must be pinned. Packages the base image carries beyond that are
counted, not refused: the README's commands install into whatever Python the user has.

    python .ci/check_lock.py constraints.txt dev
"""

import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def needed(root: str, extras: set[str]) -> set[str]:
    """Names of root and everything its requirements (with extras) pull in, for this interpreter."""
    seen, todo = set(), [(canonicalize_name(root), extras)]
    while todo:
        name, wanted = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # reported as missing by the version check when it is pinned
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(
                req.marker.evaluate({**default_environment(), "extra": e}) for e in wanted | {""}
            ):
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return seen


def main(lock: str, *extras: str) -> int:
    pins = read_lock(lock)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = [
        f"{name}: locked {pin}, installed {installed.get(name, 'nothing')}"
        for name, pin in sorted(pins.items())
        if name not in installed or Version(installed[name]) != Version(pin)
    ]
    unpinned = sorted(needed("hf-cskd", set(extras)) - set(pins) - {"hf-cskd"})
    wrong += [f"{name}: needed by hf-cskd but not in {lock}" for name in unpinned]
    if wrong:
        print(
            f"{lock}: the installed set differs from the lock (regenerate with .ci/lock, or reinstall with -c {lock}):"
        )
        print("\n".join(f"  {w}" for w in wrong))
        return 1
    extra = len(set(installed) - set(pins) - {"hf-cskd"})
    print(f"{lock}: all {len(pins)} pinned packages installed as locked ({extra} more from the base image)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
