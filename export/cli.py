"""`vsml-export` command line (not implemented yet)."""

import sys


def main() -> None:
    """Entry point of `vsml-export`."""
    print("vsml-export: not implemented yet", file=sys.stderr)
    sys.exit(2)
