"""Check (or, with ``--update``, write) the sha256 of the sdist in recipe/recipe.yaml.

``make package`` builds the sdist and runs this check, so the recipe cannot drift from what is released::

    python recipe/check_sha.py dist/myvae-0.1.0.tar.gz           # exit status 1 if the recipe differs
    python recipe/check_sha.py --update dist/myvae-0.1.0.tar.gz  # write the sdist's sha256 into the recipe
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

RECIPE = Path(__file__).with_name("recipe.yaml")
_SHA256 = re.compile(r"^(  sha256: )([0-9a-f]{64})$", re.MULTILINE)
_VERSION = re.compile(r'^  version: "([^"]+)"$', re.MULTILINE)


def sdist_sha256(path: Path) -> str:
    """The sha256 of a file, as conda recipes give it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(sdist: Path, recipe: Path = RECIPE, *, update: bool = False) -> str | None:
    """``None`` if the recipe gives the sdist's version and sha256 (after writing it, with ``update``), else why not."""
    text = recipe.read_text()
    (version,) = _VERSION.findall(text)
    if sdist.name != f"myvae-{version}.tar.gz":
        return f"{sdist.name} is not the sdist of version {version}, the recipe's; update the recipe's version"
    (recorded,) = [match.group(2) for match in _SHA256.finditer(text)]
    actual = sdist_sha256(sdist)
    if recorded == actual:
        return None
    if update:
        recipe.write_text(_SHA256.sub(rf"\g<1>{actual}", text))
        return None
    return (
        f"{recipe} gives sha256 {recorded}, but {sdist} has {actual}; after changing what goes into the sdist, "
        f"run `make recipe-sha` (or `python {Path(__file__).as_posix()} --update {sdist}`) and commit the recipe"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 1 on drift."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path)
    parser.add_argument("--update", action="store_true", help="write the sdist's sha256 into the recipe")
    args = parser.parse_args(argv)
    problem = check(args.sdist, update=args.update)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"recipe sha256 matches {args.sdist}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
