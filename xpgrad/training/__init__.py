"""The training application: recipes, the Trainer, and a run's folder.

==============  ===========================================================
module          what it holds
==============  ===========================================================
``config``      the recipes and the :class:`Config` saved in checkpoints
``inputs``      the dataset normalized onto the device
``heads``       loss heads: fused cross-entropy, or the notebook's Softmax -> Log
``trainer``     :class:`Trainer`: one step, one epoch, evaluation, checkpoints
``runfolder``   ``--out``: its lock and rules (:class:`RunFolder`), metrics.jsonl, curves.png
``run``         :func:`run`: epochs until done, writing the run folder
==============  ===========================================================
"""

from .config import DTYPES, RECIPES, Config
from .heads import CrossEntropyHead, make_head
from .inputs import normalization, to_device_inputs
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
    "DTYPES", "RECIPES", "Config", "CrossEntropyHead", "make_head", "normalization", "to_device_inputs",
    "run", "RunFolder", "append_metrics", "plot_curves", "prepare_out_dir", "read_metrics", "write_metrics", "Trainer",
]
