"""The errors costsplit raises, one small tree.

    CostsplitError
    ├── ConfigError            bad configuration (names the file, the key and the line)
    ├── SpoolError             a spool segment cannot be written or read
    ├── StoreError             the DuckDB store cannot be used
    │   └── DatabaseLocked     another process holds the database file
    ├── PriceBookError         a price book row is invalid
    ├── ModelNotGranted        a call to a model its workspace is not granted (raised before I/O)
    ├── ReportError            a report cannot be built or rendered
    └── DeliveryError          a report could not be delivered (SMTP)

Foreign errors (duckdb, smtplib, tomllib, OS) are translated at the boundary into one of these;
the CLI catches only ``CostsplitError`` and prints its message on one line.
"""

from __future__ import annotations


class CostsplitError(Exception):
    """costsplit could not do what was asked."""


class ConfigError(CostsplitError):
    """The configuration is invalid."""


class SpoolError(CostsplitError):
    """A spool segment could not be written or read."""


class StoreError(CostsplitError):
    """The event store could not be used."""


class DatabaseLocked(StoreError):
    """The database file is held by another process."""


class PriceBookError(CostsplitError):
    """A price book row is invalid."""


class ModelNotGranted(CostsplitError):
    """The workspace of this API key is not granted the requested model."""

    def __init__(self, model: str, workspace: str, granted: tuple[str, ...] = ()) -> None:
        self.model = model
        self.workspace = workspace
        self.granted = granted
        listed = ", ".join(granted) if granted else "none"
        super().__init__(
            f"model {model!r} is not granted to workspace {workspace!r} (granted: {listed})"
        )


class ReportError(CostsplitError):
    """A report could not be built or rendered."""


class DeliveryError(CostsplitError):
    """A report could not be delivered."""
