"""The federation: where a job will start soonest among the sites that may run it.

The probe itself (the one remote command and its parser) is part of the Slurm
dialect: ``gateway.slurm.probe``. Here: ``snapshot`` (the load cache shared by
every aif process), ``ranking`` (eligibility and the score: pure) and
``placer`` (probing in parallel, placing bursts).
"""
