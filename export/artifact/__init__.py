"""The export artifact (``prtk-onnx/2``): a graph's description, written by ``describe`` (embedded in the graph's
``metadata_props`` and beside it as a ``.json`` sidecar, with the export's checks and the runtimes that passed them,
``with_checks``), and read back only as an ``Artifact``: a typed record, checked against the graph it describes
(``schema``) and, on request, against a reference model (``Artifact.check_reference``, ``Artifact.reference_tower``).

A sidecar is an editable file; the graph is what runs, and nothing in a description is trusted unchecked. Outside
this package no module reads a description's JSON: they ask an ``Artifact``.
"""

from .describe import describe, zero_shot_classifier
from .record import GRAPH_BACKENDS, PROGRAM_BACKENDS, Artifact, EngineFacts
from .schema import FORMAT, check_sidecar_schema, first_difference, with_checks

__all__ = ["FORMAT", "GRAPH_BACKENDS", "PROGRAM_BACKENDS", "Artifact", "EngineFacts", "check_sidecar_schema",
           "describe", "first_difference", "with_checks", "zero_shot_classifier"]
