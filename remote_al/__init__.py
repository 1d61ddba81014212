"""remote-al, endpoint side: the registered functions and the science they use.

Heavy imports (deepmd, torch, ase, pymatgen, chgnet, gpaw) happen inside function
bodies, so that the driver can import names from here without them.
"""

__version__ = "0.1.0"
