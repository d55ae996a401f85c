"""influence package."""
