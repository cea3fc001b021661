"""Scale-out: latent sharding across ranks with ``torch.distributed``."""

from hybrid_sae_ext.distributed.sharded import ShardedForward, ShardedHybridSAE, shard_bounds

__all__ = ["ShardedForward", "ShardedHybridSAE", "shard_bounds"]
