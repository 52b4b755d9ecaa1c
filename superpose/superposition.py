"""The TST math at its documented path: `from superpose.superposition import ...`.

The code lives in `superpose.core.superposition`; this module re-exports its public names.
"""

from .core.superposition import (IGNORE_INDEX, WEIGHT_SCHEMES, bag_entropy_floor, bag_weights,
                                 chunked_multi_hot_cross_entropy, count_valid_targets, multi_hot_cross_entropy,
                                 next_bag_targets, superpose_embeddings, superpose_token_embeddings,
                                 target_coefficients)

__all__ = ["IGNORE_INDEX", "WEIGHT_SCHEMES", "bag_entropy_floor", "bag_weights", "chunked_multi_hot_cross_entropy",
           "count_valid_targets", "multi_hot_cross_entropy", "next_bag_targets", "superpose_embeddings",
           "superpose_token_embeddings", "target_coefficients"]
