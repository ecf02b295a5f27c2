"""`aif sandbox`: three real Slurm clusters and one sshd on this machine.

- ``sites``: the three sandbox sites, as data (the federation layer relies on them).
- ``configs``: pure renderers of every file the sandbox writes (golden-tested).
- ``supervisor``: the process that starts, reaps and stops the daemons.
- ``manager``: ``up``, ``down`` and ``status``, what the CLI and the tests call,
  and the faults tests inject (a controller or sshd down, a fresh cluster...);
  every public name is importable from it. Its parts: ``layout`` (state
  directory, lock, small helpers, /proc), ``health`` (status, waiting until
  daemons answer), ``preconditions`` (root, packages, paths, ports),
  ``provision`` (configs, keys, the login user, the gateway's files) and
  ``faults`` (fault injection).

Nothing is imported here, so that ``python -m gateway.sandbox.supervisor``
loads only what it needs.
"""
