"""One module per command: ``HELP``, ``TASK`` (whether it takes a task and ``--scale``),
``add_arguments(parser)`` and ``main(args)`` (arguments → one library call → printing)."""
