"""The `dreamfield` command (placeholder until the subcommands land)."""

import argparse
import sys

from dreamfield import __version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dreamfield", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dreamfield {__version__}")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
