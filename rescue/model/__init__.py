"""Plain data: layouts, extents, plans. No I/O in this package."""
