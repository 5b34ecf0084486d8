"""i-PI socket driver: serves an ACE model to i-PI or to ASE's SocketIOCalculator.

    protocol    the wire format (headers, arrays, atomic units); knows nothing of physics
    connection  addresses, connect with back-off, closing without hanging the server
    driver      the protocol state machine and the multi-connection loop
    adapter     the model behind it (``ACEPotential``): unit conversion and ``model.evaluate``
"""
from .connection import Address, connect
from .driver import Driver, Session
from .adapter import ACEPotential

__all__ = ["ACEPotential", "Address", "Driver", "Session", "connect"]
