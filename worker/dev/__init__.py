"""Development rigs: real servers on free ports, the fake provider, one harness that
starts workers and reads their events, the local system of ``budget-worker dev``
(``local``) and the demo.

Tests, benchmarks, ``budget-worker dev`` and ``budget-worker demo`` all use these; the
service itself never imports them (``budget-worker run`` loads none of this package but
the command options in ``commands``).
"""
