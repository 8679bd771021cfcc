"""property_pipeline: capture property-search API pages as immutable files, then load them exactly once."""

__version__ = "0.1.0"
