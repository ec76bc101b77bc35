"""The pure core: values in, decisions out, no I/O and no clock.

Every module here takes what it needs (measurements, deploys, the time) as
arguments and returns values; ``tests/unit/test_purity.py`` keeps it so by
reading their imports and calls.

- :mod:`.model`: measurements, findings, severities, actions, decisions;
- :mod:`.durations`: durations and instants, parsed and written;
- :mod:`.validation`: names and the problems a bad input is reported with;
- :mod:`.rules`: rule files and their evaluation over a cycle's measurements;
- :mod:`.matrix`: the playbook's decision matrix (trigger → severity);
- :mod:`.policy`: what to do at a severity, and the guards that hold it back;
- :mod:`.deploys`: deploy history and the known good version;
- :mod:`.engine`: one cycle's judgement per service and deploy;
- :mod:`.incident`: the incident model, its states and allowed transitions;
- :mod:`.recovery`: the recovery watch's judgement of one check;
- :mod:`.migrations`: which migrations a rollback undoes, and the gate's decision.
"""
