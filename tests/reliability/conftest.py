"""The reliability suite's figures are printed by the hooks in ``tests/conftest.py``.

They live there because with pytest-xdist the controller process, which prints
the summary, loads only the top-level conftest of the tests it hands out.
"""
