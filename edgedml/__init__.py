"""edgedml: deep metric learning for retrieval on small NVIDIA devices.

Sub-packages, one per concern: ``data``, ``models``, ``losses``, ``training``,
``retrieval``. Importing this package is cheap; torch is imported by the
sub-packages that need it.
"""

__version__ = "0.1.0"
