"""The `llmsuite` command line."""

import argparse
import sys

from services.cli import audit, generate, guardrails, retrieval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmsuite", description="Command line for the llmsuite serving stack.")
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    audit.add_parser(subparsers)
    generate.add_parser(subparsers)
    guardrails.add_parser(subparsers)
    retrieval.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
