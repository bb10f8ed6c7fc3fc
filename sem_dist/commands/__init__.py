"""``sem-dist`` subcommands: one module each, exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. The CLI discovers every module in this package."""
