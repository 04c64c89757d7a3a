"""Design-space exploration: sweeps, per-layer P search, metrics and plots.

  from mortar_tf import explore
  metric = explore.builtin_metric("accuracy", model, explore.load_npz("test.npz"))
  print(explore.sweep(model, metric).table())
  found = explore.search_precisions(model, metric, budget=0.005)
"""

from mortar_tf.explore import finetune
from mortar_tf.explore import plots
from mortar_tf.explore.metrics import BUILTIN
from mortar_tf.explore.metrics import Metric
from mortar_tf.explore.metrics import builtin_metric
from mortar_tf.explore.metrics import load_npz
from mortar_tf.explore.models import LoadedSavedModel
from mortar_tf.explore.results import SearchResult
from mortar_tf.explore.results import SweepPoint
from mortar_tf.explore.results import SweepResult
from mortar_tf.explore.search import resolve_map
from mortar_tf.explore.search import search_precisions
from mortar_tf.explore.sweeps import DEFAULT_GRID
from mortar_tf.explore.sweeps import sweep

__all__ = ["BUILTIN", "DEFAULT_GRID", "LoadedSavedModel", "Metric", "SearchResult", "SweepPoint",
           "SweepResult", "builtin_metric", "finetune", "load_npz", "plots", "resolve_map",
           "search_precisions", "sweep"]
