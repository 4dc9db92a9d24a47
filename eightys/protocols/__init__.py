"""asyncio Protocols, one per kind of connection a worker serves."""
