"""One module per ``memprof`` subcommand: ``register(subparsers)`` and ``run(args) -> int``."""
