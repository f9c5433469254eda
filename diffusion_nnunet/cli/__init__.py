"""Command line: one small module per subcommand (argparse only; the work happens elsewhere)."""
