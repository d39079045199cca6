"""Pure loss functions of DRL and its baselines: LSH (JSD), GCH hard and soft, prior matching.

Nothing here knows about Lightning, files or the command line: tensors in, scalar tensor out.
"""

from histodrl.losses.distributed import gather_distributed
from histodrl.losses.gch import gch_hard_loss, gch_soft_loss, soft_targets
from histodrl.losses.lsh import jsd_mi_estimate, lsh_loss, lsh_loss_literal, roll_negatives
from histodrl.losses.prior import (
    gradient_penalty,
    prior_discriminator_loss,
    prior_generator_loss,
    sample_uniform_prior,
)

__all__ = [
    "gather_distributed",
    "gch_hard_loss",
    "gch_soft_loss",
    "gradient_penalty",
    "jsd_mi_estimate",
    "lsh_loss",
    "lsh_loss_literal",
    "prior_discriminator_loss",
    "prior_generator_loss",
    "roll_negatives",
    "sample_uniform_prior",
    "soft_targets",
]
