"""`vsml-train` command line (not implemented yet)."""

import sys


def main() -> None:
    """Entry point of `vsml-train`."""
    print("vsml-train: not implemented yet", file=sys.stderr)
    sys.exit(2)
