"""Subprocess for the crash test: resume if possible, train, print each finished step (flushed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _workload import config, trainer  # noqa: E402

import hybrid_sae_ext  # noqa: E402,F401

run = trainer(config(Path(sys.argv[1])))
run.resume()
while run.step < run.cfg.total_steps:
    run.train_step()
    if run.step % run.cfg.checkpoint_every == 0 or run.step == run.cfg.total_steps:
        run.save_checkpoint()
    print(f"step {run.step}", flush=True)
print("done", flush=True)
