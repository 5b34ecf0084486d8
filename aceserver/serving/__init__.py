"""Servers that hand ACE energies, forces and stresses to other programs (HTTP, i-PI)."""
