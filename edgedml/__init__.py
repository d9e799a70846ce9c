"""edgedml: deep metric learning for retrieval on small NVIDIA devices.

One sub-package per concern, stacked so that a module imports only from its layer or those below
(README, "Layout"; checked by ``lint-imports``): the base modules (``errors``, ``io``, ``config``,
``registry``, ``units``, ``metrics``, ``progress``); ``data``, ``models``, ``losses``, ``memory``,
``distill``; ``objective`` (one training step); ``budget``; ``training``; ``export``; ``retrieval``;
and the CLI on top. The methods are stated in ``docs/methods.md``. Importing this package is cheap;
torch is imported by the sub-packages that need it.
"""

__version__ = "0.1.0"
