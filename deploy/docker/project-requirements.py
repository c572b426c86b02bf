"""Print what pyproject.toml asks pip to install, one requirement a line: [build-system].requires and
[project].dependencies. The Dockerfile installs these in a layer of their own, before the source tree is
copied, so a change in src/ rebuilds only the last, small layers (and torch is not reinstalled).

Standard library only (it runs on the bare base image): `python3 project-requirements.py pyproject.toml`.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path) -> list[str]:
    """The build backend's requirements, then the project's runtime dependencies, in the file's order."""
    data = tomllib.loads(pyproject.read_text())
    return [*data.get("build-system", {}).get("requires", []), *data.get("project", {}).get("dependencies", [])]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: project-requirements.py PYPROJECT_TOML", file=sys.stderr)
        return 2
    try:
        lines = requirements(Path(argv[0]))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"error: cannot read the requirements of {argv[0]}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
