"""i-PI socket driver: serves an ACE model to i-PI or to ASE's SocketIOCalculator.

    protocol    the wire format (headers, arrays, atomic units, the read timeout); knows nothing of physics
    connection  addresses, connect with back-off, TCP keep-alive, closing without hanging the server
    guard       the watchdog process that closes the connections politely if the driver dies
    driver      the protocol state machine and the multi-connection loop
    adapter     the model behind it (``ACEPotential``): unit conversion and ``model.evaluate``
"""
from .adapter import ACEPotential
from .connection import Address, connect
from .driver import Driver, Session

__all__ = ["ACEPotential", "Address", "Driver", "Session", "connect"]
