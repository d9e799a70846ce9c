"""The ``edgedml`` command line (installed as ``edgedml.cli``): thin commands over the library."""
