"""tensam's Optuna sweeper under the name Hydra accepts.

Hydra instantiates a sweeper only if its class lives in the ``hydra_plugins`` namespace package
and was found there by its plugin scan (``hydra.core.plugins.Plugins._instantiate``), so
``_target_: tensam.sweep.OptunaSweeper`` is refused; this module (a portion of that namespace,
with no ``__init__.py`` beside it) names :class:`tensam.sweep.OptunaSweeper` there.
"""

from tensam import sweep


class OptunaSweeper(sweep.OptunaSweeper):
    """:class:`tensam.sweep.OptunaSweeper`, discoverable by Hydra."""
