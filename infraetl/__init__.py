"""infraetl: a secure, streaming ETL of RandomUser records."""

__version__ = "0.1.0"
