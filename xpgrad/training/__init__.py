"""The training application: recipes, the Trainer, and a run's folder.

==============  ===========================================================
module          what it holds
==============  ===========================================================
``config``      the recipes and the :class:`Config` saved in checkpoints
``modelspec``   ``--model``: the built-in models, or your own file or module
``blame``       whether a failure in a run is the model's, and the one line that says so
``inputs``      the dataset normalized onto the device
``batches``     an epoch's batch order, counter and sums on the device
``heads``       loss heads: fused cross-entropy, or the notebook's Softmax -> Log
``trainer``     :class:`Trainer`: one step, one epoch, evaluation, checkpoints
``legacy``      checkpoints of formats 1 and 2 (the hand-written MLP's)
``runfolder``   ``--out``: its lock and rules (:class:`RunFolder`), metrics.jsonl, curves.png
``run``         :func:`run`: epochs until done, writing the run folder
==============  ===========================================================
"""

from .config import DTYPES, RECIPES, Config
from .heads import make_head
from .modelspec import ModelSpec
from .inputs import Inputs, normalization
from .run import run
from .runfolder import (
    RunFolder,
    append_metrics,
    plot_curves,
    prepare_out_dir,
    read_metrics,
    write_metrics,
)
from .trainer import Trainer

__all__ = [
    "DTYPES", "RECIPES", "Config", "ModelSpec", "make_head", "normalization", "Inputs",
    "run", "RunFolder", "append_metrics", "plot_curves", "prepare_out_dir", "read_metrics", "write_metrics", "Trainer",
]
