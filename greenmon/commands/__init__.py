"""One module per ``greenmon`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Commands are imported only when chosen, so ``greenmon sql`` never pays for torch.
"""
