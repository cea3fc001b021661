"""Scale-out with ``torch.distributed``: data parallelism and latent sharding."""

from hybrid_sae_ext.distributed.data_parallel import DataParallel, init_from_environment
from hybrid_sae_ext.distributed.sharded import RankShare, ShardedHybridSAE, shard_bounds

__all__ = ["DataParallel", "RankShare", "ShardedHybridSAE", "init_from_environment", "shard_bounds"]
