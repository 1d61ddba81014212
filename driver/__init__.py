"""remote-al, driver side: campaign config, steering loop, state, backends, CLI.

Imports nothing heavy: the driver runs on a laptop without torch or deepmd.
"""

from remote_al import __version__

__all__ = ["__version__"]
