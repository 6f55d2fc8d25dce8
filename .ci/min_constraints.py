"""Print pip constraints pinning every dependency in pyproject.toml to its declared floor (``name>=x`` -> ``name==x``).

``make test-min`` installs with them, so the floors the package declares are the versions one CI job tests.
"""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement


def main() -> int:
    """Print the constraints; exit status 1 if a dependency has no single floor."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if len(floors) != 1:
            print(f"{requirement.name} has no single '>=' floor: {requirement.specifier}", file=sys.stderr)
            return 1
        print(f"{requirement.name}=={floors[0]}")
    # the tests read zarr stores; anndata 0.11 (the floor) writes and reads zarr 2 only
    print("zarr<3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
