"""SavedModel reading and rewriting: variables, the compute graph, the converter.

  from mortar_tf import savedmodel
  graph = savedmodel.read_graph("model_dir")
  report = savedmodel.convert("model_dir", "model_morphed", "paper", 0.1)
  report = savedmodel.convert("model_dir", "out", "fewest_ones", 0.05, compensate="calib.npz")
  savedmodel.write_archive("model_morphed", "model_morphed.tar.gz")
"""

from mortar_tf.archive import ArchiveReport
from mortar_tf.archive import write_archive
from mortar_tf.compensation import DEFAULT_DAMPING
from mortar_tf.files import OutputError
from mortar_tf.savedmodel.compensate import Compensation
from mortar_tf.savedmodel.compensate import CompensationSettings
from mortar_tf.savedmodel.converter import ConversionReport
from mortar_tf.savedmodel.converter import convert
from mortar_tf.savedmodel.graph import ComputeOp
from mortar_tf.savedmodel.graph import SavedModelGraph
from mortar_tf.savedmodel.graph import read_graph
from mortar_tf.savedmodel.variables import SavedModelError
from mortar_tf.savedmodel.verify import Verification
from mortar_tf.savedmodel.verify import VerificationError
from mortar_tf.savedmodel.verify import verify_outputs

__all__ = ["ArchiveReport", "Compensation", "CompensationSettings", "ComputeOp", "ConversionReport",
           "DEFAULT_DAMPING", "OutputError", "SavedModelError", "SavedModelGraph", "Verification",
           "VerificationError", "convert", "read_graph", "verify_outputs", "write_archive"]
