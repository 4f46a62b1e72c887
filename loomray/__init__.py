"""loomray: LOOM-CFM flow matching on Ray."""

__version__ = "0.1.0"
