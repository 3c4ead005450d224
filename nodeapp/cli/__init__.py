"""The ``orderflow`` command line: parsing, the node process, the operator's client commands."""
