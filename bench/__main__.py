"""``python -m bench [<name> [options]]``: run one benchmark by name, or all of them.

A benchmark is any module ``bench/<name>.py`` with a ``main(argv)`` function that parses its
own options (``python -m bench <name> --help``); its docstring's first line describes it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType


def benchmarks() -> dict[str, str]:
    """Benchmark names and where they live, in name order."""
    here = str(Path(__file__).parent)
    return {
        info.name: f"bench.{info.name}"
        for info in sorted(pkgutil.iter_modules([here]), key=lambda info: info.name)
        if not info.name.startswith("_")
    }


def _load(module: str) -> ModuleType:
    loaded = importlib.import_module(module)
    if not callable(getattr(loaded, "main", None)):
        raise SystemExit(f"{module} has no main(argv) function")
    return loaded


def main(argv: list[str]) -> int:
    available = benchmarks()
    if argv and argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        for name, module in available.items():
            summary = (_load(module).__doc__ or "").strip().splitlines()
            print(f"  {name:<12} {summary[0] if summary else ''}")
        return 0
    if argv and not argv[0].startswith("-"):
        if argv[0] not in available:
            print(f"unknown benchmark {argv[0]!r}; choose from: {', '.join(available)}")
            return 2
        selected, rest = [argv[0]], argv[1:]
    else:
        selected, rest = list(available), argv
    for name in selected:
        _load(available[name]).main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
