"""Train an SAE from an activation cache (captured first when missing), save it for SAELens, evaluate it.

Example (the embedded default model and corpus, offline)::

    python scripts/train_hybrid_sae.py --cache_dir runs/acts --out runs/hybrid --tokens 262144 \\
        --d_sae 2048 --k 16 --batch_size 4096 --total_steps 500 --checkpoint_dir runs/hybrid-ckpt

After a crash run the same command with ``--resume``: training continues from the newest good
checkpoint on the same data stream. Data-parallel: ``torchrun --nproc_per_node N
scripts/train_hybrid_sae.py ...`` (rank 0 captures, saves and evaluates). The final SAE loads with
``sae_lens.SAE.load_from_disk(out)`` after ``import hybrid_sae_ext``; metrics go to ``out/eval.json``.
"""

from __future__ import annotations

from hybrid_sae_ext.training.cli import main

if __name__ == "__main__":
    main()
