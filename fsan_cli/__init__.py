"""fsan: weakly supervised temporal language grounding with FSAN."""

__version__ = "0.1.0"
