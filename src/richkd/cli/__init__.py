"""The command line: one module per command group, each a thin layer that parses, calls the library, prints.

Owns argument parsing, console output and exit codes only. No library module imports this package (a test
walks the imports); `richkd.cli.app` holds the top-level parser and `main`, the console script's entry point.
"""

from richkd.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
