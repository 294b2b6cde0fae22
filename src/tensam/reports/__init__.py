"""Tables and figures from run directories.

:mod:`tensam.reports.runs` reads runs back (the one place that knows a run directory's layout),
:mod:`tensam.reports.format` formats them, :mod:`tensam.stats` compares methods; one module per
paper artefact builds it (``table1`` ... ``table5``, ``fig1`` ... ``fig3``, ``normdyn``,
``fastpath``), each with a ``main()`` that ``scripts/<name>.py`` and ``python -m`` call. The prose
of a report that is not a number lives in ``templates/`` beside them.
"""

from tensam.reports.runs import *  # noqa: F403 - the readers, as `tensam.reports.<name>`
from tensam.reports.runs import __all__  # noqa: F401
