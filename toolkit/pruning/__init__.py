"""Stage 3, the pruned tower: ``TowerSpec`` (what a pruned tower is) and ``build_tower`` (the one factory every
command uses), the tower that wraps open_clip's ViT, the token scorers, and the cost model."""

from prtk.pruning.spec import TowerSpec, build_tower
from prtk.pruning.tower import PrunedVisionTower, keep_count

__all__ = ["PrunedVisionTower", "TowerSpec", "build_tower", "keep_count"]
