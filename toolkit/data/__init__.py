"""Stage 2, data: labelled ImageFolders read with their content hashes, in-memory image tensors, and the
synthetic shapes data set (``prtk make-shapes``)."""
