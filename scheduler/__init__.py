"""A distributed job scheduler: cron on one machine, shell commands on many."""

__version__ = "0.1.0"
