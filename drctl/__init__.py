"""drctl: disaster-recovery failover orchestrator."""

__version__ = "0.1.0"
