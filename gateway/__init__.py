"""aif: one portable job spec, submitted to Europe's AI Factories through real Slurm."""

__version__ = "0.1.0"
