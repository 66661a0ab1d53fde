"""Stage 1, models: load an open_clip CLIP by name and weights source, and the facts prtk needs about its ViT.

``prtk.models.vit`` is the only module that touches open_clip's VisionTransformer internals.
"""

from prtk.models.compat import import_open_clip
from prtk.models.configs import (builtin_checkpoint, builtin_config_path, builtin_model_names, config_problem,
                                 known_model_names, register_builtin_configs, register_config_file,
                                 shipped_model_names)
from prtk.models.loading import LoadedClip, check_made_for, load_clip, weights_option
from prtk.models.state_dicts import load_checkpoint, read_state_dict, state_dict_sha256
from prtk.models.vit import ViTSpec, vision_transformer

__all__ = ["LoadedClip", "ViTSpec", "builtin_checkpoint", "builtin_config_path", "builtin_model_names",
           "check_made_for", "config_problem", "import_open_clip", "known_model_names", "load_checkpoint", "load_clip",
           "read_state_dict", "register_builtin_configs", "register_config_file", "shipped_model_names",
           "state_dict_sha256", "vision_transformer", "weights_option"]
