"""Everything that awaits on a network: the SSH listener, session and forward relays,
upstream connections, and the per-connection monitor that enforces expiry,
revocation and kills. Decisions come from `gatekeeper`; this package carries them out.
"""
