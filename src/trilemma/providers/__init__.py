"""Transports to LLM endpoints, behind one async protocol (see :mod:`.base`)."""
