"""The old home of the training code, kept so that ``from xpgrad.train import Trainer`` still works.

Everything moved to :mod:`xpgrad.training`; import it from there.
"""

from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
