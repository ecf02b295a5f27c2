"""The federation: where a job will start soonest among the sites that may run it.

``probe`` (the one remote command and its parser; part of the Slurm dialect),
``snapshot`` (the load cache shared by every aif process), ``ranking``
(eligibility and the score: pure) and ``placer`` (probing in parallel,
placing bursts). This file imports nothing, so the dialect's part can be
imported alone.
"""
