"""Command-line interface: one module per verb, each a thin wrapper over the library."""
