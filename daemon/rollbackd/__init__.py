"""rollbackd: roll back a bad deploy the way the team's rollback playbook says.

The pure decision core is :mod:`rollbackd.core.rules` (rule parsing and evaluation),
:mod:`rollbackd.core.matrix` (the playbook's severity matrix) and
:mod:`rollbackd.core.policy` (severity to action, and the guards). They take values,
time included, and return decisions; they never do I/O or read the clock.
"""

__version__ = "0.1.0"
