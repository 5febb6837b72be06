"""`streamasr serve`: the WebSocket daemon (protocol v1), its HTTP routes, metrics and limits."""
