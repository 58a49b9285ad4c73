"""Stand-in for the `future` package (see ../README.md)."""
