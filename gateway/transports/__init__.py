"""Transports only run commands at a site; they know nothing of Slurm.

The Slurm dialect (argv builders, parsers) lives in ``gateway.slurm``.
"""

from gateway.transports.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
