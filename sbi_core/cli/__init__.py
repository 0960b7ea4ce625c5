"""The ``sbi-core`` command line: one module per subcommand (``*_cmd.py``)."""
