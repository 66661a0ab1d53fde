"""Stage 4a, the golden ranking: the greedy search (``GoldenRanker``), its batched candidate suffix, a folder run
that resumes and shards (``rank_images``), and the ranking file (``prtk-ranking/1``)."""
