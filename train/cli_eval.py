"""`vsml-eval` command line (not implemented yet)."""

import sys


def main() -> None:
    """Entry point of `vsml-eval`."""
    print("vsml-eval: not implemented yet", file=sys.stderr)
    sys.exit(2)
