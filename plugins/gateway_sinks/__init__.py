"""The gateway's built-in sinks, registered through the same entry-point group as third-party plugins."""
